"""Compose the objects of a run from its config: data, model, module, callbacks, loggers."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from glowlab.data import ImageDataModule
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.training.module import FlowModule
from glowlab.validation import check_positive


@dataclass
class RunObjects:
    datamodule: ImageDataModule
    model: MultiscaleFlow
    module: FlowModule
    trainer: L.Trainer


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail late or silently, naming the config key."""
    check_positive("data.batch_size", cfg.data.batch_size)
    optimizer = cfg.module.optimizer
    if "lr" in optimizer:
        check_positive("module.optimizer.lr", optimizer.lr)
    if cfg.trainer.get("max_steps", -1) == 0:
        raise ValueError(
            "trainer.max_steps=0 trains nothing; use -1 (no limit) or a positive value"
        )


def instantiate_nodes(nodes: DictConfig | None) -> list:
    """Instantiate every non-null ``_target_`` node of a group such as ``callbacks``."""
    if not nodes:
        return []
    return [instantiate(node) for node in nodes.values() if node and "_target_" in node]


def build_model(cfg: DictConfig, datamodule: ImageDataModule) -> MultiscaleFlow:
    """Instantiate ``cfg.model`` for the data's image shape and bit depth."""
    num_classes = cfg.model.get("num_classes")
    if (
        num_classes
        and datamodule.num_classes is not None
        and num_classes != datamodule.num_classes
    ):
        raise ValueError(
            f"model.num_classes={num_classes} but data {datamodule.name!r} has "
            f"{datamodule.num_classes} classes; set model.num_classes={datamodule.num_classes}"
        )
    return instantiate(
        cfg.model, image_shape=list(datamodule.image_shape), n_bits=datamodule.n_bits
    )


def build_run(cfg: DictConfig) -> RunObjects:
    """Seed every generator with ``cfg.seed``, then build the run's objects."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: ImageDataModule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    module: FlowModule = instantiate(cfg.module, model=model)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_nodes(cfg.get("callbacks")),
        logger=instantiate_nodes(cfg.get("logger")) or False,
    )
    return RunObjects(datamodule, model, module, trainer)
