"""A guard on the headline: the main job's first 100 training steps, as recorded.

The main job (``experiment=fmnist_glow_cpu``, the README's number) is run for its first 100
optimizer steps, with its own 6,400-step schedule, seed and data order; each step's training
bpd and a checksum of each batch must match ``tests/data/main_job_curve.json``. A change to the
model's initial log-likelihood, its ActNorm initialisation, the data order or augmentation, the
optimizer or the schedule moves this curve, so it cannot move the main job's bpd silently: the
failure says whether the data or the numbers changed. After an intended change, regenerate the
file with ``GLOWLAB_RECORD_CURVE=1 .venv/bin/python -m pytest tests/test_main_job_curve.py`` and
measure the main job again (README "The main job").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest

from glowlab.training.run import build_run
from tests.conftest import FASHION_MNIST, compose_run

REFERENCE = Path(__file__).parent / "data" / "main_job_curve.json"
STEPS = 100
TOLERANCE_BPD = 1e-3  # bit-exact on one machine; other CPUs' kernels round differently
MAIN_JOB = [
    "experiment=fmnist_glow_cpu",
    "callbacks=none",
    "logger=none",
    "test=false",
    "trainer.max_time=null",
]


class _FirstSteps(L.Callback):
    """Record each step's training bpd and batch checksum; stop after ``STEPS`` steps."""

    def __init__(self) -> None:
        self.bpd: list[float] = []
        self.batches: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x, y = batch
        self.bpd.append(float(outputs["loss"]))
        self.batches.append([int(x.long().sum()), int((x.long() ** 2).sum()), int(y.sum())])
        if len(self.bpd) == STEPS:
            raise _Enough


class _Enough(Exception):
    """Raised to end the run after the recorded steps."""


@pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist",
)
def test_main_job_first_100_steps_are_unchanged(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, MAIN_JOB)
    run = build_run(cfg)
    recorder = _FirstSteps()
    run.trainer.callbacks.insert(0, recorder)
    with pytest.raises(_Enough):
        run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.module.total_steps == 6400  # the main job's own schedule
    got = {"steps": STEPS, "train_bpd": recorder.bpd, "batch_checksums": recorder.batches}
    if os.environ.get("GLOWLAB_RECORD_CURVE"):
        REFERENCE.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(REFERENCE.read_text())
    moved = [
        i
        for i, (a, b) in enumerate(
            zip(expected["batch_checksums"], got["batch_checksums"], strict=True)
        )
        if a != b
    ]
    assert not moved, f"the main job's data order or augmentation changed from step {moved[0]}"
    off = [
        (i, a, b)
        for i, (a, b) in enumerate(zip(expected["train_bpd"], got["train_bpd"], strict=True))
        if abs(a - b) > TOLERANCE_BPD
    ]
    assert not off, (
        f"the main job's training curve moved (same data) from step {off[0][0]}: "
        f"{off[0][1]:.5f} recorded, {off[0][2]:.5f} now ({len(off)} of {STEPS} steps differ)"
    )
