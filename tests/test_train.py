"""The training app: composition, a real run, metrics, resume, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from glowlab.train import train
from glowlab.training.checkpoints import load_checkpoint
from glowlab.training.run import build_run
from tests.conftest import TINY_RUN, compose_run


def test_tiny_run_writes_metrics_checkpoints_and_samples(tiny_run: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["steps"] == 16
    assert 0 < metrics["test/bpd"] < 10
    assert metrics["ranks_agree"] == {"after_actnorm_init": True, "at_end": True}
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    assert Path(metrics["sample_grid"]).is_file()
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    assert ckpt["glowlab"]["image_shape"] == [1, 8, 8]
    assert ckpt["glowlab"]["config"]["model"]["depth"] == 2
    assert all(torch.is_tensor(v) for v in ckpt["state_dict"].values())


class _StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_run: Path, tmp_path: Path) -> None:
    """Stop a 2-epoch run after its first epoch (same config), resume from last.ckpt."""
    first, resumed = tmp_path / "first_epoch", tmp_path / "resumed"
    run = build_run(compose_run(first, TINY_RUN))
    run.trainer.callbacks.append(_StopAfterFirstEpoch())
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.trainer.current_epoch == 1 and run.trainer.global_step == 8
    last = first / "checkpoints" / "last.ckpt"
    train(compose_run(resumed, [*TINY_RUN, f"ckpt_path={last}"]))
    expected, got = _final_state(tiny_run), _final_state(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
