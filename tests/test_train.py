"""The training app: composition, a real run, metrics, resume, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from glowlab.training.checkpoints import load_checkpoint


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
