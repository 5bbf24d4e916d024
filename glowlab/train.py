"""``glowlab-train``: fit a flow and report its test bits per dim (a Hydra app on conf/train.yaml).

Examples::

    glowlab-train                                   # Glow-small on Fashion-MNIST, CPU
    glowlab-train experiment=fmnist_glow_cpu        # the README's main job
    glowlab-train model=realnvp_small trainer=gpu
    glowlab-train ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt   # resume
    glowlab-train -m model.depth=4,8 model.width=64,128                    # a sweep
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from glowlab.cli import run_cli
from glowlab.training.callbacks import SampleGrid
from glowlab.training.checkpoints import load_checkpoint
from glowlab.training.run import RunObjects, build_run

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
log = logging.getLogger("glowlab.train")


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback else ""
    return path or None


def _metric(trainer: L.Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


def _sample_grid_path(trainer: L.Trainer) -> str | None:
    for callback in trainer.callbacks:
        if isinstance(callback, SampleGrid) and callback.latest:
            return str(callback.latest[max(callback.latest)])
    return None


def fit_and_test(cfg: DictConfig, run: RunObjects) -> dict[str, Any]:
    """Fit (optionally resuming), test the best checkpoint, return the run's metrics."""
    trainer, module, datamodule = run.trainer, run.module, run.datamodule
    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    if cfg.ckpt_path is not None:
        load_checkpoint(cfg.ckpt_path)  # clear errors before Lightning's
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        if module.nonfinite_step is not None:
            last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
            raise FloatingPointError(
                f"the loss became NaN/Inf at step {module.nonfinite_step}; training stopped "
                f"before that update. The last good weights are in {last}. Lower "
                "module.optimizer.lr, raise module.scheduler.warmup_steps, or lower "
                "trainer.gradient_clip_val, then resume with ckpt_path=<that file>"
            )
        metrics["val/bpd"] = _metric(trainer, "val/bpd")
        metrics["train/bpd"] = _metric(trainer, "train/bpd")
    if cfg.test:
        best = _best_checkpoint(trainer) if cfg.train else cfg.ckpt_path
        trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
        metrics["test/bpd"] = _metric(trainer, "test/bpd")
        metrics["test_checkpoint"] = best
    metrics.update(
        steps=trainer.global_step,
        epochs=trainer.current_epoch,
        wall_time_s=round(time.perf_counter() - started, 2),
        parameters=sum(p.numel() for p in run.model.parameters()),
        best_checkpoint=_best_checkpoint(trainer),
        sample_grid=_sample_grid_path(trainer),
        ranks_agree=module.ranks_agree,
        overrides=list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    )
    return metrics


def _log_hparams(cfg: DictConfig, run: RunObjects, metrics: dict[str, Any]) -> None:
    """Send the resolved config and the final bpd to the loggers (TensorBoard's HPARAMS tab)."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    final = {
        f"hp/{k.replace('/', '_')}": v
        for k, v in metrics.items()
        if k.endswith("bpd") and v is not None
    }
    for logger in run.trainer.loggers:
        if hasattr(logger, "log_hyperparams"):
            if (
                final
                and hasattr(logger.log_hyperparams, "__code__")
                and "metrics" in logger.log_hyperparams.__code__.co_varnames
            ):
                logger.log_hyperparams(flat, metrics=final)
            else:
                logger.log_hyperparams(flat)
        logger.finalize("success")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        value = tree if isinstance(tree, int | float | str | bool) else str(tree)
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns its metrics (also metrics.json)."""
    run = build_run(cfg)
    metrics = fit_and_test(cfg, run)
    if run.trainer.is_global_zero:
        _log_hparams(cfg, run, metrics)
        out = Path(cfg.paths.output_dir) / "metrics.json"
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        summary = ", ".join(
            f"{k} {metrics[k]:.4f}" for k in ("val/bpd", "test/bpd") if metrics.get(k) is not None
        )
        print(f"glowlab: {summary} | steps {metrics['steps']} | {metrics['wall_time_s']:.0f} s")
        print(f"glowlab: run dir {cfg.paths.output_dir}")
        if metrics.get("sample_grid"):
            print(f"glowlab: sample grid {metrics['sample_grid']}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli("glowlab-train", train, cfg)
    value = metrics.get(cfg.get("optimized_metric", "val/bpd"))
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
