"""Faults and bad inputs around training: full disk, empty or mismatched checkpoints, signals,
unwritable outputs, no logger — each one clear line, never a silent success."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import glowlab.outputs as outputs
import glowlab.training.checkpoints as checkpoints
from glowlab.cli import user_error
from glowlab.outputs import OutputWriteError
from glowlab.train import fit_and_test, train
from glowlab.training.checkpoints import load_checkpoint
from glowlab.training.run import build_run
from tests.conftest import compose_run

TINY = [
    "data=synthetic",
    "data.image_size=8",
    "data.batch_size=16",
    "data.train_subset=64",
    "model=glow_small",
    "model.depth=1",
    "model.conditioner.hidden=8",
    "module.init_batch_size=32",
    "module.scheduler.warmup_steps=2",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
    "callbacks.sample_grid.n=4",
    "test=false",
]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults_run")
    train(compose_run(run_dir, [*TINY, "logger=csv"]))
    return run_dir / "checkpoints" / "last.ckpt"


class _DiskFullFrom(L.Callback):
    """From ``step`` on, every fsync of a written file fails with ENOSPC."""

    def __init__(self, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step, self.monkeypatch = step, monkeypatch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:

            def full(fd: int) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self.monkeypatch.setattr(outputs.os, "fsync", full)


@pytest.mark.parametrize(
    ("callbacks", "first_failure"),
    [([], "sample grid"), (["callbacks.sample_grid=null"], "checkpoint")],
    ids=["default-callbacks", "no-sample-grid"],
)
def test_full_disk_is_one_line_with_the_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, callbacks, first_failure
) -> None:
    """4 batches in the epoch, last.ckpt every 2 steps, the disk full from step 3: the first
    write that fails is the epoch-end validation's sample grid (default callbacks) or, without
    it, the step-4 last.ckpt. One line naming that file, the reason and the resume command;
    last.ckpt of step 2 intact, no temporary file left."""
    overrides = [*TINY, "logger=csv", "callbacks.model_checkpoint.last_every_n_steps=2"]
    cfg = compose_run(tmp_path, [*overrides, *callbacks])
    run = build_run(cfg)
    run.trainer.callbacks.insert(0, _DiskFullFrom(3, monkeypatch))
    with pytest.raises(OutputWriteError) as raised:
        fit_and_test(cfg, run)
    message = str(user_error(raised.value))
    monkeypatch.undo()
    assert message.startswith(f"could not write {first_failure} ") and "\n" not in message
    assert "(the disk is full)" in message and "holds step 2" in message
    assert "resume with: glowlab-train" in message
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not list(tmp_path.rglob(".*.tmp"))  # no half-written file left behind


def test_empty_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "last.ckpt"
    empty.touch()
    with pytest.raises(ValueError, match=r"is empty \(0 bytes"):
        train(compose_run(tmp_path / "run", [*TINY, f"ckpt_path={empty}"]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.depth=2", "model.depth"),
        ("model.preprocess=logit", "model.preprocess"),
        ("data.n_bits=5", "data.n_bits"),
    ],
)
def test_resume_with_a_changed_model_or_data_config_is_refused(
    tiny_ckpt: Path, tmp_path: Path, override: str, key: str
) -> None:
    with pytest.raises(ValueError, match=rf"cannot resume.*{re.escape(key)}.*allow_config_change"):
        train(compose_run(tmp_path, [*TINY, override, f"ckpt_path={tiny_ckpt}"]))


def test_allowed_config_change_resumes(tiny_ckpt: Path, tmp_path: Path) -> None:
    overrides = [
        "data.eval_batch_size=8",
        "trainer.max_epochs=2",
        "module.resume_schedule=rebuild",  # a finished 4-step schedule, now 8 steps
        "logger=csv",
    ]
    metrics = train(compose_run(tmp_path, [*TINY, *overrides, f"ckpt_path={tiny_ckpt}"]))
    assert metrics["steps"] == 8  # 4 more steps after the checkpoint's 4
    checkpoint = load_checkpoint(tiny_ckpt)
    current = {"model": checkpoint["glowlab"]["config"]["model"] | {"coupling": "additive"}}
    checkpoints.check_config_unchanged(
        checkpoint, current, ["model.coupling"], sections=("model",)
    )
    with pytest.raises(ValueError, match="model.coupling"):
        checkpoints.check_config_unchanged(checkpoint, current, [], sections=("model",))


def test_model_n_bits_names_data_n_bits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.n_bits is no .*set data\.n_bits=5 instead"):
        train(compose_run(tmp_path, [*TINY, "+model.n_bits=5"]))


def test_no_logger_with_default_callbacks_trains(tmp_path: Path) -> None:
    metrics = train(compose_run(tmp_path, [*TINY, "logger=none", "trainer.max_steps=2"]))
    assert metrics["steps"] == 2


def test_unwritable_output_dir_is_named_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "checkpoints"
    with pytest.raises(
        ValueError, match=rf"output directory {re.escape(str(bad))} is not writable"
    ):
        build_run(compose_run(tmp_path, [*TINY, f"callbacks.model_checkpoint.dirpath={bad}"]))


def test_last_ckpt_is_rewritten_at_every_validation(tmp_path: Path) -> None:
    """Default settings: last.ckpt follows the training even when val/bpd gets worse."""
    cfg = compose_run(
        tmp_path,
        [
            *TINY,
            "logger=csv",
            "trainer.max_epochs=3",
            "callbacks.model_checkpoint.last_every_n_steps=null",
            "module.optimizer.lr=0.5",
        ],
    )
    train(cfg)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 12


def test_hparams_and_final_bpd_reach_tensorboard(tmp_path: Path) -> None:
    train(compose_run(tmp_path, [*TINY, "logger=tensorboard", "test=true"]))
    [logdir] = {p.parent for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    plugin = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    start = plugin["_hparams_/session_start_info"]
    assert b"model/depth" in start and b"data/batch_size" in start
    scalars = accumulator.Tags()["scalars"]
    assert {"hp/val_bpd", "hp/test_bpd"} <= set(scalars)
    [final] = accumulator.Scalars("hp/test_bpd")
    assert 0 < final.value < 10


@pytest.mark.slow
def test_sigterm_in_a_real_process_saves_and_prints_the_resume_command(tmp_path: Path) -> None:
    """``glowlab-train`` gets SIGTERM mid-training: exit 143, one line with the command that
    resumes it; that command finishes the run."""
    args = [
        *[a for a in TINY if not a.startswith("trainer.max_epochs")],
        "trainer.max_epochs=-1",
        "trainer.max_steps=120",
        "logger=csv",
        "callbacks.model_checkpoint.last_every_n_steps=5",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "glowlab.train", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if "resume with:" in line]
    assert len(lines) == 1, stderr[-2000:]
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[0] == "glowlab-train" and command[-1] == f"ckpt_path={last.resolve()}"
    step = load_checkpoint(last)["global_step"]
    assert 0 < step < 120
    resumed = subprocess.run(
        [sys.executable, "-m", "glowlab.train", *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [metrics] = tmp_path.glob("logs/train/runs/*/metrics.json")  # the resumed run's own dir
    assert json.loads(metrics.read_text())["steps"] == 120


def test_allowed_architecture_change_is_one_line_not_a_load_traceback(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    """allow_config_change over a change of depth or width: refused before Lightning loads
    anything, naming what does not fit; no 'Missing key(s)' / 'size mismatch' traceback."""
    for change, kind in (
        ("model.depth=2", "missing"),
        ("model.conditioner.hidden=12", "of another shape"),
    ):
        key = change.split("=")[0]
        overrides = [*TINY, change, f"allow_config_change=[{key}]", f"ckpt_path={tiny_ckpt}"]
        with pytest.raises(ValueError, match="weights do not fit this model") as refused:
            train(compose_run(tmp_path / key, overrides))
        assert kind in str(refused.value) and "\n" not in str(refused.value)


def test_init_weights_fine_tunes_with_a_new_optimizer(tiny_ckpt: Path, tmp_path: Path) -> None:
    """init_weights=<ckpt>: a new run from those weights (step 0, a new schedule); with
    ckpt_path too it is refused; a model whose shapes differ is refused in one line."""
    captured = {}

    class _FirstWeights(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            captured.update({k: v.clone() for k, v in pl_module.model.state_dict().items()})

    cfg = compose_run(tmp_path / "tuned", [*TINY, f"init_weights={tiny_ckpt}", "logger=csv"])
    run = build_run(cfg)
    run.trainer.callbacks.insert(0, _FirstWeights())
    metrics = fit_and_test(cfg, run)
    saved = load_checkpoint(tiny_ckpt)["state_dict"]
    assert all(torch.equal(saved[f"model.{k}"], v) for k, v in captured.items())
    assert metrics["steps"] == 4  # its own 4 steps, not 4 more after the checkpoint's
    with pytest.raises(ValueError, match="not both"):
        train(
            compose_run(
                tmp_path / "both", [*TINY, f"init_weights={tiny_ckpt}", f"ckpt_path={tiny_ckpt}"]
            )
        )
    with pytest.raises(ValueError, match="start from the weights of .* do not fit"):
        train(
            compose_run(tmp_path / "deeper", [*TINY, "model.depth=2", f"init_weights={tiny_ckpt}"])
        )


class _NanGradientFrom(L.Callback):
    """From ``step`` on, one parameter's gradient is NaN while the loss stays finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            next(pl_module.model.parameters()).register_hook(lambda g: g * float("nan"))


@pytest.mark.parametrize(
    ("overrides", "extra", "expected"),
    [
        # a huge LR: the loss goes non-finite in the epoch's last batch, where validation (and
        # inverting a singular 1×1 weight) used to follow and crash
        (["module.optimizer.lr=1e5"], None, r"loss became NaN/Inf at step \d: training diverged"),
        ([], _NanGradientFrom(2), r"gradient became NaN/Inf at step 2: training diverged"),
        (
            ["model.transform.bound=1e30", "model/transform=spline"],
            None,
            r"NaN/Inf at the first step \(0\), before any update.*not a learning-rate problem\); "
            r"check the options you changed: .*model.transform.bound=1e30 model/transform=spline",
        ),
    ],
    ids=["huge-lr", "nan-gradient", "model-option-at-step-0"],
)
def test_nonfinite_training_is_one_line_that_names_the_cause(
    tmp_path: Path, overrides, extra, expected
) -> None:
    cfg = compose_run(tmp_path, [*TINY, "logger=csv", *overrides])
    run = build_run(cfg)
    if extra is not None:
        run.trainer.callbacks.insert(0, extra)
    with pytest.raises(FloatingPointError, match=expected) as raised:
        fit_and_test(cfg, run)
    assert "\n" not in str(raised.value)
    last = tmp_path / "checkpoints" / "last.ckpt"
    if last.exists():
        state = load_checkpoint(last)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
