"""Exact resume: a run interrupted (crash, signal) and resumed from its last.ckpt ends with
the very tensors of the same run done in one go — model, optimizer, schedule, data order."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from glowlab.train import fit_and_test
from glowlab.training.checkpoints import load_checkpoint
from glowlab.training.run import build_run
from tests.conftest import FASHION_MNIST, compose_run

# A tiny Glow on 96 real Fashion-MNIST images: 6 batches of 16 per epoch.
REAL_TINY = [
    "data=fashion_mnist",
    "data.train_subset=96",
    "data.batch_size=16",
    "data.val_size=64",
    "model=glow_small",
    "model.depth=1",
    "model.conditioner.hidden=8",
    "module.init_batch_size=32",
    "module.scheduler.warmup_steps=3",
    "trainer.log_every_n_steps=2",
    "callbacks.progress_bar=null",
    "callbacks.sample_grid.n=4",
    "callbacks.model_checkpoint.last_every_n_steps=null",
    "logger=csv",
    "test=false",
]

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist",
)


class _CrashAtStep(L.Callback):
    """Raise (a crash, an OOM kill...) as the batch after ``step`` optimizer steps starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class _SignalAtStep(L.Callback):
    """Send this process ``signum`` as the batch after ``step`` optimizer steps starts."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _fit(run_dir: Path, overrides: list[str], *extra: L.Callback):
    cfg = compose_run(run_dir, [*REAL_TINY, *overrides])
    run = build_run(cfg)
    run.trainer.callbacks[:0] = extra
    fit_and_test(cfg, run)
    return run


def _interrupted(run_dir: Path, overrides: list[str], stop: L.Callback) -> int | None:
    """Run until ``stop`` interrupts; return the exit status it asked for (None: a crash)."""
    try:
        _fit(run_dir, overrides, stop)
    except RuntimeError as error:
        assert "simulated crash" in str(error)
        return None
    except SystemExit as stopped:
        return stopped.code
    raise AssertionError("the run was not interrupted")


def _tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor (and number) of a nested checkpoint entry, by its path."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return {prefix: torch.as_tensor(tree)} if isinstance(tree, int | float) else {}
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        if torch.is_tensor(value):
            out[f"{prefix}/{key}"] = value
        else:
            out.update(_tensors(value, f"{prefix}/{key}"))
    return out


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Weights (the EMA's θ̄ and live θ with EMA on), optimizer, schedule, random streams,
    epoch and the loops' counters of a run's last.ckpt."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    state = _tensors(ckpt["state_dict"], "model")
    for entry in ("current_model_state", "averaging_state"):
        state.update(_tensors(ckpt.get(entry, {}), entry))
    state.update(_tensors(ckpt["optimizer_states"], "optimizer"))
    state.update(_tensors(ckpt["lr_schedulers"], "schedule"))
    state.update(_tensors(ckpt["glowlab"]["rng_state"], "rng"))
    state.update(_tensors(ckpt["loops"], "loops"))
    state["global_step"] = torch.tensor(ckpt["global_step"])
    state["epoch"] = torch.tensor(ckpt["epoch"])
    return state


def _assert_bit_equal(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys()
    differing = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differing, f"{len(differing)} of {len(expected)} differ: {differing[:5]}"


STEPS = ["trainer.max_steps=14", "trainer.max_epochs=-1"]  # 2 epochs and 2 batches
EPOCHS = ["trainer.max_epochs=2"]


@pytest.mark.parametrize(
    ("bounds", "checkpointing", "stop", "status"),
    [
        # max_steps; last.ckpt every 4 steps, crash at 9: resumes mid-epoch 2 from step 8
        (STEPS, ["callbacks.model_checkpoint.last_every_n_steps=4"], _CrashAtStep(9), None),
        # max_epochs; validation (and last.ckpt) every 4 batches, crash at step 5
        (EPOCHS, ["trainer.val_check_interval=4"], _CrashAtStep(5), None),
        # max_steps; SIGTERM during step 8: last.ckpt at step 8, exit 143
        (STEPS, [], _SignalAtStep(7, signal.SIGTERM), 143),
        # max_epochs; Ctrl+C during step 3 (mid-epoch), exit 130
        (EPOCHS, [], _SignalAtStep(2, signal.SIGINT), 130),
        # max_epochs; crash as epoch 2 starts: resumes from the end-of-epoch-1 validation
        (EPOCHS, [], _CrashAtStep(6), None),
    ],
    ids=["steps-every-n", "epochs-at-validation", "steps-sigterm", "epochs-sigint", "epoch-end"],
)
def test_interrupted_and_resumed_equals_straight(
    tmp_path: Path, bounds, checkpointing, stop, status
) -> None:
    overrides = [*bounds, *checkpointing]
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    _fit(straight, overrides)
    assert _interrupted(first, overrides, stop) == status
    last = first / "checkpoints" / "last.ckpt"
    saved_step = load_checkpoint(last)["global_step"]
    assert 0 < saved_step < _state(straight)["global_step"]
    _fit(resumed, [*overrides, f"ckpt_path={last}"])
    _assert_bit_equal(_state(straight), _state(resumed))


def test_schedule_keeps_the_original_length_when_asked(tmp_path: Path) -> None:
    """Resuming with a larger max_steps and resume_schedule=keep continues the original
    schedule (total 14 steps); the steps past its end run at its final LR, 0."""
    first = tmp_path / "first"
    assert _interrupted(first, STEPS, _SignalAtStep(5, signal.SIGTERM)) == 143
    last = first / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["glowlab"]["total_steps"] == 14
    more = ["trainer.max_steps=16", "trainer.max_epochs=-1", f"ckpt_path={last}"]
    run = _fit(tmp_path / "resumed", [*more, "module.resume_schedule=keep"])
    assert run.module.total_steps == 14
    assert run.trainer.global_step == 16
    assert run.trainer.optimizers[0].param_groups[0]["lr"] == 0


def test_extending_a_finished_run_is_refused_or_rebuilds_the_schedule(tmp_path: Path) -> None:
    """A finished 14-step run resumed with max_steps=20: refused in one line naming both
    choices; with resume_schedule=rebuild the cosine spans 20 steps and every added step trains
    at that schedule's (non-zero) LR, and the added steps are validated."""
    _fit(tmp_path / "done", STEPS)
    last = tmp_path / "done" / "checkpoints" / "last.ckpt"
    more = ["trainer.max_steps=20", "trainer.max_epochs=-1", f"ckpt_path={last}"]
    with pytest.raises(ValueError, match=r"plans 20 optimizer steps .* spans 14") as refused:
        _fit(tmp_path / "refused", more)
    assert "module.resume_schedule=rebuild" in str(refused.value)
    assert "module.resume_schedule=keep" in str(refused.value)
    lrs, seen = _LearningRates(), _Validations()
    run = _fit(tmp_path / "extended", [*more, "module.resume_schedule=rebuild"], lrs, seen)
    assert run.module.total_steps == 20 and run.trainer.global_step == 20
    base = run.trainer.lr_scheduler_configs[0].scheduler.base_lrs[0]
    expected = [base * 0.5 * (1 + math.cos(math.pi * step / 20)) for step in range(14, 20)]
    assert lrs.values == pytest.approx(expected, rel=1e-6)
    assert seen.steps == [18]  # the end of epoch 3 (6 batches an epoch)
    assert (
        load_checkpoint(tmp_path / "extended" / "checkpoints" / "last.ckpt")["glowlab"][
            "total_steps"
        ]
        == 20
    )


class _LearningRates(L.Callback):
    """The LR of every training batch, as the optimizer step uses it."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.values.append(trainer.optimizers[0].param_groups[0]["lr"])


class _Validations(L.Callback):
    """Records the global step of every (non-sanity) validation."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


@pytest.mark.parametrize(
    ("bounds", "extra", "stop"),
    [
        (STEPS, [], _SignalAtStep(5, signal.SIGTERM)),
        (STEPS, [], _SignalAtStep(6, signal.SIGTERM)),
        (EPOCHS, [], _SignalAtStep(5, signal.SIGINT)),
        (STEPS, ["callbacks/ema=on"], _SignalAtStep(5, signal.SIGTERM)),
        (STEPS, ["callbacks.model_checkpoint.last_every_n_steps=6"], _CrashAtStep(7)),
    ],
    ids=[
        "last-batch",
        "first-batch-of-next",
        "last-batch-epochs-sigint",
        "last-batch-ema",
        "every-n-at-epoch-end-then-crash",
    ],
)
def test_stop_at_an_epoch_boundary_resumes_exactly(tmp_path: Path, bounds, extra, stop) -> None:
    """A stop in the last batch of epoch 1 (batch 6 of 6) or the first of epoch 2, or a
    last.ckpt written at epoch 1's end then a crash: both parts together run the epoch-end
    validation once, and the resumed run ends with the straight run's every tensor, epoch and
    loop counter."""
    overrides = [*bounds, *extra]
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    straight_seen, resumed_seen = _Validations(), _Validations()
    _fit(straight, overrides, straight_seen)
    _interrupted(first, overrides, stop)
    last = first / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] in (6, 7)
    _fit(resumed, [*overrides, f"ckpt_path={last}"], resumed_seen)
    _assert_bit_equal(_state(straight), _state(resumed))
    assert 6 in straight_seen.steps and 6 not in resumed_seen.steps  # the first part ran it
    assert [s for s in straight_seen.steps if s > 6] == resumed_seen.steps
