"""EMA of the weights (``callbacks/ema=on``): validation, test, checkpoints and tools evaluate
the hand-computed average, and an interrupted run resumes it bit for bit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from glowlab.tools.loading import load_flow
from glowlab.train import fit_and_test
from glowlab.training.callbacks import EMA
from glowlab.training.checkpoints import load_checkpoint
from glowlab.training.run import build_run
from tests.conftest import compose_run
from tests.test_resume import _assert_bit_equal, _CrashAtStep, _tensors

# A tiny Glow on 64 synthetic 8×8 images: 4 batches of 16 per epoch, validated at epoch ends.
EMA_RUN = [
    "data=synthetic",
    "data.image_size=8",
    "data.batch_size=16",
    "data.train_subset=64",
    "data.val_size=32",
    "model=glow_small",
    "model.depth=1",
    "model.conditioner.hidden=8",
    "module.init_batch_size=32",
    "module.scheduler.warmup_steps=2",
    "callbacks=minimal",
    "callbacks/ema=on",
    "callbacks.ema.decay=0.6",
    "callbacks.model_checkpoint.last_every_n_steps=null",
    "logger=none",
    "trainer.num_sanity_val_steps=0",
]


class _Recorder(L.Callback):
    """Live parameters after every optimizer step, and the parameters validation and test
    actually evaluate (read at their first batch)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []
        self.tested: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _params(pl_module) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(self._params(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if batch_idx == 0:
            self.validated.append(self._params(pl_module))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if batch_idx == 0:
            self.tested.append(self._params(pl_module))


def _ema_by_hand(steps: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """``θ̄_1 = θ_1``, ``θ̄_k = d·θ̄_{k−1} + (1 − d)·θ_k``."""
    average = dict(steps[0])
    for step in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * step[k] for k in average}
    return average


def _assert_close(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)


def test_validation_test_checkpoint_and_tools_use_the_hand_computed_average(
    tmp_path: Path,
) -> None:
    cfg = compose_run(tmp_path, [*EMA_RUN, "trainer.max_epochs=2"])
    run = build_run(cfg)
    recorder = _Recorder()
    run.trainer.callbacks.insert(0, recorder)  # before EMA: sees the step's live weights
    fit_and_test(cfg, run)
    assert [type(c) for c in run.trainer.callbacks].count(EMA) == 1
    assert len(recorder.steps) == 8 and len(recorder.validated) == 2

    # each validation evaluates the average of the steps so far, not the live weights
    for validation, steps in zip(recorder.validated, (4, 8), strict=True):
        expected = _ema_by_hand(recorder.steps[:steps], 0.6)
        _assert_close(expected, validation)
        live = recorder.steps[steps - 1]
        assert any(not torch.equal(validation[k], live[k]) for k in live)
    final = _ema_by_hand(recorder.steps, 0.6)
    _assert_close(final, recorder.tested[0])  # test of the best checkpoint: the average too

    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    saved = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    live = {k.removeprefix("model."): v for k, v in ckpt["current_model_state"].items()}
    _assert_close(final, {k: saved[k] for k in final})
    assert all(torch.equal(live[k], recorder.steps[-1][k]) for k in final)  # θ kept for resume
    assert int(ckpt["averaging_state"]["n_averaged"]) == 8

    model, _ = load_flow(last)  # what every tool loads
    _assert_close(final, dict(model.named_parameters()))


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    state = {}
    for entry in ("state_dict", "current_model_state", "averaging_state", "optimizer_states"):
        state.update(_tensors(ckpt[entry], entry))
    state["global_step"] = torch.tensor(ckpt["global_step"])
    return state


def test_interrupted_and_resumed_ema_equals_straight(tmp_path: Path) -> None:
    """Crash at step 6 after a last.ckpt at step 4; the resumed run's average, live weights
    and optimizer equal a straight 8-step run's bit for bit."""
    every = [*EMA_RUN, "trainer.max_epochs=2", "callbacks.model_checkpoint.last_every_n_steps=4"]

    def fit(run_dir: Path, overrides: list[str], extra: L.Callback | None = None) -> None:
        cfg = compose_run(run_dir, [*every, "test=false", *overrides])
        run = build_run(cfg)
        if extra is not None:
            run.trainer.callbacks.insert(0, extra)
        fit_and_test(cfg, run)

    fit(tmp_path / "straight", [])
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "first", [], _CrashAtStep(6))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4
    fit(tmp_path / "resumed", [f"ckpt_path={last}"])
    straight, resumed = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert not torch.equal(
        straight["state_dict/model.levels.1.prior.mean"],
        straight["current_model_state/model.levels.1.prior.mean"],
    )
    _assert_bit_equal(straight, resumed)


def test_bad_ema_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"callbacks.ema.decay=1.0 must be in \[0, 1\)"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="callbacks.ema.update_every_n_steps=0"):
        EMA(update_every_n_steps=0)
