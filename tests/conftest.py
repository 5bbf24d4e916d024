"""Shared fixtures: real Fashion-MNIST images when the Debian package is installed."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

# The test models are tiny: one thread per process is several times faster than two threads
# fighting over two cores (and the DDP/sweep tests start subprocesses, which inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fmnist_images() -> torch.Tensor:
    """The first 256 real Fashion-MNIST test images, uint8 ``(256, 1, 28, 28)``."""
    path = FASHION_MNIST / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        raw = f.read(16 + 256 * 28 * 28)
    pixels = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8)
    return pixels.view(256, 1, 28, 28).clone()


def perturb_parameters(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move every parameter away from its (often identity) initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


CONF = Path(__file__).resolve().parents[1] / "glowlab" / "conf"


SHRUNK = {  # recipe -> options that make one of its presets tiny (paper sizes in seconds)
    "glowlab.models.tarflow": {"blocks": 1, "block": {"layers": 1, "width": 24}},
    "glowlab.models.jet": {"couplings": 2, "conditioner": {"depth": 1, "width": 16}},
    "glowlab.models.flow_matching": {"field": {"width": 8, "blocks": 1, "attention_levels": []}},
}


def shrunk(model_config) -> dict:
    """Keyword overrides that keep a model config's layout but make it small: one step per
    level for the multiscale recipes, a recipe's own small sizes for the others."""
    return dict(SHRUNK.get(model_config.get("_target_"), {"depth": 1}))


def model_config_shape(name: str) -> tuple[int, int, int]:
    """The image shape to build ``conf/model/<name>.yaml`` at: CIFAR-sized for the paper
    presets (their 3 levels need sides divisible by 8), Fashion-MNIST-sized otherwise."""
    paper_sized = name in ("glow", "realnvp") or name.endswith("_paper")
    return (3, 32, 32) if paper_sized else (1, 28, 28)


TINY_RUN = [
    "data=synthetic",
    "data.image_size=8",
    "data.batch_size=16",
    "data.train_subset=128",
    "model=glow_small",
    "model.depth=2",
    "model.conditioner.hidden=16",
    "module.init_batch_size=64",
    "module.scheduler.warmup_steps=5",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=2",
    "callbacks.progress_bar=null",
    "callbacks.sample_grid.n=16",
]


def compose_run(run_dir: Path, overrides: list[str], config_name: str = "train"):
    """Compose ``conf/<config_name>.yaml`` as the Hydra app would, writing under ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            config_name,
            overrides=[f"hydra.run.dir={run_dir}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


BRIEF_RUN = [
    "data.train_subset=512",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "trainer=cpu",
    "trainer.max_epochs=-1",
    "trainer.log_every_n_steps=1",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "callbacks=minimal",
    "logger=csv",
]
"""A few logged steps on real Fashion-MNIST (512 training images), one eval batch each."""


def train_briefly(run_dir: Path, overrides: list[str], steps: int):
    """Train ``steps`` steps with ``BRIEF_RUN`` then ``overrides`` (which win); return the
    run's metrics and the rows of its CSV log."""
    import csv

    from glowlab.train import train

    if not FASHION_MNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    cfg = compose_run(run_dir, [*BRIEF_RUN, f"trainer.max_steps={steps}", *overrides])
    metrics = train(cfg)
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return metrics, rows


def logged(rows: list[dict], key: str) -> list[float]:
    """The values of ``key`` over the CSV log's rows that have it."""
    return [float(row[key]) for row in rows if row.get(key)]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Train a tiny Glow for 2 epochs on synthetic 8×8 images; return its run dir."""
    from glowlab.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    train(compose_run(run_dir, TINY_RUN))
    return run_dir
