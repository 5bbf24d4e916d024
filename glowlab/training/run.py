"""Compose the objects of a run from its config: data, model, module, callbacks, loggers."""

from __future__ import annotations

import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from glowlab.data import ImageDataModule
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.options import check_options
from glowlab.outputs import check_writable
from glowlab.training.callbacks import StopOnSignal
from glowlab.training.checkpoints import AtomicCheckpointIO
from glowlab.training.data_order import make_train_order_resumable
from glowlab.training.module import FlowModule

log = logging.getLogger("glowlab.train")
# Callbacks that need a logger; dropped (with a note) when the run has none.
NEEDS_LOGGER = (LearningRateMonitor,)
# The signal SLURM sends before a time limit or preemption (submitit's --signal=USR2@delay,
# changed by submitit's SUBMITIT_PREEMPT_SIGNAL).
SLURM_REQUEUE_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


@dataclass
class RunObjects:
    datamodule: ImageDataModule
    model: MultiscaleFlow
    module: FlowModule
    trainer: L.Trainer


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail late or silently, naming the config key: every number's
    range (``glowlab.options``, also for ``train(cfg)`` called from Python), the trainer."""
    check_options(cfg)
    check_trainer(cfg.trainer)


def check_trainer(trainer: DictConfig) -> None:
    """An accelerator this machine lacks, or a ``max_time`` Lightning cannot read, is refused
    naming the key (Lightning's own messages name neither)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible on this machine; use "
            "trainer=cpu (or trainer.accelerator=auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ValueError("trainer.accelerator=mps but MPS is not available here; use trainer=cpu")
    max_time = trainer.get("max_time")
    if isinstance(max_time, str) and not re.fullmatch(r"\d+:\d\d:\d\d:\d\d", max_time):
        raise ValueError(
            f"trainer.max_time={max_time!r} is not a duration DD:HH:MM:SS; pass e.g. "
            'trainer.max_time="00:01:30:00" (1 h 30 min) or null'
        )


def output_directories(trainer: L.Trainer, cfg: DictConfig) -> list[str]:
    """Where the run will write: its output dir, callbacks' ``dirpath``s, loggers' dirs."""
    dirs = [str(cfg.paths.output_dir)]
    dirs += [str(c.dirpath) for c in trainer.callbacks if getattr(c, "dirpath", None)]
    dirs += [str(lg.save_dir) for lg in trainer.loggers if getattr(lg, "save_dir", None)]
    return dirs


def instantiate_nodes(nodes: DictConfig | None) -> list:
    """Instantiate every non-null ``_target_`` node of a group such as ``callbacks``."""
    if not nodes:
        return []
    return [instantiate(node) for node in nodes.values() if node and "_target_" in node]


def build_model(cfg: DictConfig, datamodule: ImageDataModule) -> MultiscaleFlow:
    """Instantiate ``cfg.model`` for the data's image shape and bit depth (``data.n_bits``, the
    model's only source of it: ``model.n_bits`` is refused by ``glowlab.migration``)."""
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


def metric_key(key: str, metric_name: str) -> str:
    """``key`` (``val/bpd``, ``test/prior_bpd``, ...) renamed for a model that reports
    ``metric_name``: ``val/bpd`` -> ``val/noisy_bpd`` for a noise-augmented model, so that
    its density of noisy images is never read as (or compared with) a discrete-data bpd;
    unchanged for ``metric_name="bpd"`` and for keys that are not a bpd."""
    prefix = metric_name.removesuffix("bpd")
    stage, sep, name = key.rpartition("/")
    if not prefix or not name.endswith("bpd") or name.startswith(prefix):
        return key
    return f"{stage}{sep}{prefix}{name}"


def follow_metric(callbacks: list[L.Callback], metric_name: str) -> None:
    """Point every ``ModelCheckpoint`` monitoring a bpd at the model's own name (``val/bpd``
    -> ``val/noisy_bpd``), in its ``monitor`` and in the ``{val/bpd...}`` of its file name."""
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor:
            renamed = metric_key(callback.monitor, metric_name)
            if renamed != callback.monitor and callback.filename:
                callback.filename = callback.filename.replace(
                    "{" + callback.monitor, "{" + renamed
                ).replace("-bpd{", f"-{metric_name}{{")
            callback.monitor = renamed


def build_callbacks(
    cfg: DictConfig, has_logger: bool, metric_name: str = "bpd"
) -> list[L.Callback]:
    """The configured callbacks (minus those that need a logger when there is none) and
    :class:`StopOnSignal`, which makes SIGTERM/SIGINT save a resumable ``last.ckpt``.
    Checkpoint monitors follow the model's ``metric_name`` (``follow_metric``)."""
    callbacks = instantiate_nodes(cfg.get("callbacks"))
    follow_metric(callbacks, metric_name)
    if not has_logger:
        dropped = [type(c).__name__ for c in callbacks if isinstance(c, NEEDS_LOGGER)]
        if dropped:
            log.info("no logger: leaving out %s", ", ".join(dropped))
        callbacks = [c for c in callbacks if not isinstance(c, NEEDS_LOGGER)]
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return [*callbacks, StopOnSignal(str(last))]


def build_plugins() -> list:
    """Atomic checkpoint writes; on SLURM, Lightning's auto-requeue on ``SIGUSR2``."""
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=SLURM_REQUEUE_SIGNAL))
    return plugins


def build_run(cfg: DictConfig) -> RunObjects:
    """Seed every generator with ``cfg.seed``, then build the run's objects."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: ImageDataModule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    module: FlowModule = instantiate(cfg.module, model=model)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    loggers = instantiate_nodes(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=build_callbacks(cfg, bool(loggers), model.metric_name),
        logger=loggers or False,
        plugins=build_plugins(),
    )
    make_train_order_resumable(
        datamodule, int(cfg.seed), lambda: (trainer.world_size, trainer.global_rank)
    )
    if cfg.get("train", True) and trainer.is_global_zero and not trainer.fast_dev_run:
        check_writable(
            output_directories(trainer, cfg),
            "pick a writable place with hydra.run.dir=<dir> or paths.root_dir=<dir>",
        )
    return RunObjects(datamodule, model, module, trainer)


def slurm_requeued() -> bool:
    """True in a SLURM job that was requeued (preempted or timed out, then restarted)."""
    return SLURMEnvironment.detect() and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
