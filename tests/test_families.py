"""Every flow-family preset trains through glowlab-train on real Fashion-MNIST (bpd goes
down), and its checkpoint reloads through the tools' loader, round-trips images and samples."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from glowlab.tools.loading import load_flow
from glowlab.train import train
from tests.conftest import FASHION_MNIST, compose_run

# CPU-sized presets, narrowed further so each run takes seconds.
PRESETS = {
    "nsf": ["model.conditioner.hidden=16"],
    "flowpp": ["model.conditioner.hidden=16", "model.dequantization.width=8"],
    "resflow": ["model.width=16", "module.optimizer.lr=2e-2"],
    "ffjord": ["model.width=8"],
    "maf": ["model.width=16"],
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_and_bpd_goes_down(
    tmp_path: Path, preset: str, fmnist_images: torch.Tensor
) -> None:
    if not FASHION_MNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    overrides = [
        f"model={preset}",
        "model.depth=1",
        "data.train_subset=512",
        "data.batch_size=32",
        "data.eval_batch_size=64",
        "module.init_batch_size=128",
        "module.optimizer.lr=5e-3",
        *PRESETS[preset],
        "module.scheduler.warmup_steps=3",
        "trainer=cpu",
        "trainer.max_epochs=-1",
        "trainer.max_steps=20",
        "trainer.log_every_n_steps=1",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "callbacks=minimal",
        "logger=csv",
    ]
    metrics = train(compose_run(tmp_path, overrides))
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    curve = [float(r["train/bpd"]) for r in rows if r.get("train/bpd")]
    assert len(curve) >= 15
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first - 0.5, (preset, curve)
    assert 0 < metrics["test/bpd"] < 16

    model, _ = load_flow(metrics["best_checkpoint"])
    x = fmnist_images[:4]
    assert torch.equal(model.decode(model.encode(x)), x)
    samples = model.sample(2, temperature=0.7)
    assert samples.shape == (2, 1, 28, 28) and samples.dtype == torch.uint8
