"""Every config in conf/ composes and instantiates; every experiment runs a fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger

from glowlab.models.multiscale import MultiscaleFlow
from glowlab.train import train
from glowlab.training.run import build_model, instantiate_nodes
from tests.conftest import CONF, compose_run, model_config_shape, shrunk
from tests.fixtures import make_celeba, make_cifar10, make_imagenet

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUP_OPTIONS = [
    (group, p.stem)
    for group in (
        "data",
        "model",
        "optimizer",
        "scheduler",
        "trainer",
        "callbacks",
        "logger",
        "debug",
    )
    for p in sorted((CONF / group).glob("*.yaml"))
]
TINY_MODEL = ["module.init_batch_size=8"]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_group_option_composes_and_instantiates(tmp_path: Path, group: str, option: str) -> None:
    package = {"optimizer": "@module.optimizer", "scheduler": "@module.scheduler"}.get(group, "")
    overrides = [f"{group}{package}={option}"]
    if group != "trainer":
        overrides.append("trainer=cpu")
    cfg = compose_run(tmp_path, overrides)
    if group == "data":
        datamodule = instantiate(cfg.data)
        assert len(datamodule.image_shape) == 3
    elif group == "model":
        shape = model_config_shape(option)
        model = instantiate(cfg.model, image_shape=shape, n_bits=5, **shrunk(cfg.model))
        assert isinstance(model, MultiscaleFlow) and model.n_bits == 5
        assert model.image_shape == tuple(shape) and sum(p.numel() for p in model.parameters())
        x = torch.randint(0, 32, (2, *shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            log_prob = model.eval().log_prob(x.to(torch.uint8))
        assert log_prob.shape == (2,) and torch.isfinite(log_prob).all()
    elif group in ("optimizer", "scheduler"):
        params = [torch.nn.Parameter(torch.zeros(2))]
        optimizer = instantiate(cfg.module.optimizer)(params)
        scheduler = instantiate(cfg.module.scheduler)(optimizer, total_steps=10)
        assert isinstance(optimizer, torch.optim.Optimizer)
        assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
        optimizer.step()
        scheduler.step()
        assert all(0 < lr < 1 for lr in scheduler.get_last_lr())
    elif group in ("callbacks", "logger"):
        nodes = instantiate_nodes(cfg.get(group))
        assert all(isinstance(node, L.Callback | Logger) for node in nodes)
        assert nodes or option in ("none", "minimal"), f"{group}={option} built nothing"
    elif group == "trainer" and option in ("cpu", "default", "ddp_cpu"):
        trainer = instantiate(cfg.trainer)
        assert isinstance(trainer, L.Trainer) and trainer.num_devices >= 1
    else:  # GPU trainers and debug presets: composition alone on this CPU machine
        assert cfg.trainer.accelerator


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_builds_at_full_size(tmp_path: Path, name: str) -> None:
    """The paper presets build their real model (not run: they need a GPU and days)."""
    cfg = compose_run(tmp_path, [f"experiment={name}"])
    model = build_model(cfg, instantiate(cfg.data))
    assert model.dims == __import__("math").prod(model.image_shape)
    if name == "glow_cifar10":
        assert (len(model.levels), cfg.model.depth, cfg.model.conditioner.hidden) == (3, 32, 512)


def _fixture_data(name: str, root: Path) -> list[str]:
    """Overrides that point an experiment's dataset at a tiny on-disk fixture."""
    if "cifar10" in name:
        make_cifar10(root)
        return [f"data.root={root}", "data.val_size=20"]
    if "imagenet64" in name:
        make_imagenet(root, size=64)
        return [f"data.root={root}", "data.val_size=8", "data.num_workers=0"]
    if "celeba" in name:
        make_celeba(root)
        return [f"data.root={root}", "data.val_size=2", "data.num_workers=0"]
    return ["data.train_subset=64"]  # Fashion-MNIST: the real files


def _narrow(model) -> None:
    """A tiny model of the experiment's layout: ``shrunk`` sizes, 8 hidden channels."""
    sizes = shrunk(model)
    for key, value in sizes.items():
        if isinstance(value, dict):  # a part node (model.block, model.field): its sizes only
            model[key].update(value)
        else:
            model[key] = value
    if "conditioner" in model:
        model.conditioner.hidden = 8
    elif "width" in model and "width" not in sizes:
        model.width = 8


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_fast_dev_run(tmp_path: Path, name: str) -> None:
    overrides = [
        f"experiment={name}",
        "trainer=cpu",
        "debug=fdr",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.num_workers=0",
        "callbacks.progress_bar=null",
        *TINY_MODEL,
        *_fixture_data(name, tmp_path / "data"),
    ]
    if name.startswith("fmnist") and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    cfg = compose_run(tmp_path / "run", overrides)
    _narrow(cfg.model)
    metrics = train(cfg)
    assert metrics["steps"] == 1
    assert 0 < metrics["test/bpd"] < 16
