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
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.migration import check_model_config, check_resumable, translate_checkpoint
from glowlab.outputs import OutputWriteError, write_text
from glowlab.overrides import key_of
from glowlab.training.callbacks import SampleGrid, StopOnSignal, TrainingInterrupted
from glowlab.training.checkpoints import (
    check_config_unchanged,
    check_weights_fit,
    checkpoint_step,
    load_checkpoint,
    load_weights,
)
from glowlab.training.module import FlowModule, NonFiniteLossError
from glowlab.training.run import RunObjects, build_run, metric_key, slurm_requeued
from glowlab.training.sample_quality import SampleQualityMonitor

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


def resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``; in a requeued SLURM job without one, the run's own ``last.ckpt`` when it
    is at least as new as Lightning's ``hpc_ckpt_*.ckpt`` (which Lightning picks otherwise)."""
    if cfg.ckpt_path is not None or not slurm_requeued():
        return cfg.ckpt_path
    checkpoints = Path(cfg.paths.output_dir)
    last = checkpoints / "checkpoints" / "last.ckpt"
    hpc = [checkpoint_step(p) or -1 for p in checkpoints.glob("hpc_ckpt_*.ckpt")]
    step = checkpoint_step(last)
    return str(last) if step is not None and step >= max(hpc, default=-1) else None


def check_resume(cfg: DictConfig, ckpt_path: str, model: torch.nn.Module) -> int:
    """Clear errors before Lightning's: a readable glowlab checkpoint whose model and data
    config match this run's (except ``allow_config_change`` keys) and whose weights fit
    ``model`` (an allowed change must not change the architecture). Returns its step."""
    checkpoint = load_checkpoint(ckpt_path)
    check_resumable(checkpoint, ckpt_path)
    checkpoint = translate_checkpoint(checkpoint)  # an older run's config as it reads today
    current = OmegaConf.to_container(cfg, resolve=True)
    allowed = list(cfg.get("allow_config_change") or [])
    check_config_unchanged(checkpoint, current, allowed, what=f"resume from {ckpt_path}")
    check_weights_fit(
        checkpoint,
        model,
        f"resume from {ckpt_path}",
        "allow_config_change only accepts changes that keep every weight's shape. Train the "
        "new model from scratch, or drop the model overrides",
    )
    return int(checkpoint["global_step"])


def start_from_weights(cfg: DictConfig, model: torch.nn.Module) -> None:
    """``init_weights=<ckpt>``: fine-tune from a checkpoint's weights (the EMA average where it
    kept one) with this run's new optimizer, schedule and step count."""
    if cfg.ckpt_path is not None:
        raise ValueError(
            "pass ckpt_path=<ckpt> to resume a run, or init_weights=<ckpt> to start a new run "
            "from its weights, not both"
        )
    step = load_weights(cfg.init_weights, model)
    log.info("starting from the weights of %s (step %d)", cfg.init_weights, step)


def resume_command(cfg: DictConfig, ckpt_path: str) -> str:
    """``glowlab-train <this run's overrides> ckpt_path=<abs path>``, shell-quoted."""
    kept = [o for o in _overrides() if key_of(o) != "ckpt_path"]
    args = [*kept, f"ckpt_path={Path(ckpt_path).resolve()}"]
    return " ".join(["glowlab-train", *(shlex.quote(a) for a in args)])


def _interruption(run: RunObjects) -> TrainingInterrupted | None:
    for callback in run.trainer.callbacks:
        if isinstance(callback, StopOnSignal) and callback.interrupted is not None:
            return callback.interrupted
    return None


def stop_interrupted(cfg: DictConfig, stop: TrainingInterrupted) -> NoReturn:
    """One line (saved checkpoint and how to resume), then exit with ``128 + signal``."""
    if stop.path is not None:
        print(
            f"glowlab: stopped by {stop.name} at step {stop.step}; resume with: "
            f"{resume_command(cfg, stop.path)}",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"glowlab: stopped by {stop.name} at step {stop.step}; no checkpoint could be "
            "written (no checkpoint callback, or the loss had gone NaN/Inf)",
            file=sys.stderr,
            flush=True,
        )
    raise SystemExit(128 + stop.signum)


def _nonfinite_message(cfg: DictConfig, error: NonFiniteLossError, first_step: int) -> str:
    """What went NaN/Inf and when, where the last good weights are, and what to change: at the
    run's first step (before any update) the model or data options, later the optimisation."""
    last, saved = _last_checkpoint(cfg)
    model = [o for o in _overrides() if key_of(o).startswith(("model.", "model/"))]
    if error.step == first_step:
        changed = model
        suspects = f"the options you changed: {' '.join(changed)}" if changed else "the model"
        return (
            f"the {error.what} is NaN/Inf at the first step ({error.step}), before any update, so "
            f"the model gives non-finite values for this data (not a learning-rate problem); "
            f"check {suspects}"
        )
    where, then = (
        (f"The last good weights are in {last} (step {saved})", f"resume with ckpt_path={last}")
        if saved is not None
        else ("No checkpoint was written before that step", "start again")
    )
    changed = model + [
        o
        for o in _overrides()
        if key_of(o).startswith(("module.optimizer.", "module.scheduler."))
        and key_of(o) != "module.optimizer.lr"
    ]
    also = f" (or revisit {' '.join(changed)})" if changed else ""
    return (
        f"the {error.what} became NaN/Inf at step {error.step}: training diverged and stopped "
        f"before that update. {where}. Lower module.optimizer.lr, raise "
        f"module.scheduler.warmup_steps, or lower trainer.gradient_clip_val{also}, then {then}"
    )


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _last_checkpoint(cfg: DictConfig) -> tuple[Path, int | None]:
    """The run's ``last.ckpt`` (absolute) and the step it holds (None: none written)."""
    last = (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").resolve()
    return last, checkpoint_step(last) if last.is_file() else None


def _write_failed_message(cfg: DictConfig, error: OutputWriteError) -> str:
    """``error``'s line, then where training can resume from once the disk is fixed."""
    last, saved = _last_checkpoint(cfg)
    if saved is None:
        return f"{error.failure}; training stopped before any checkpoint was written"
    return (
        f"{error.failure}; training stopped, {last} holds step {saved}: free space (or fix "
        f"permissions), then resume with: {resume_command(cfg, str(last))}"
    )


def stopped_by(trainer: L.Trainer) -> str:
    """What ended ``fit``: ``max_steps``, ``max_epochs``, ``max_time`` or ``callback`` (a
    callback set ``should_stop``, e.g. early stopping)."""
    if 0 <= trainer.max_steps <= trainer.global_step:
        return "max_steps"
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
        return "max_epochs"
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    if any(t.time_remaining() is not None and t.time_remaining() <= 0 for t in timers):
        return "max_time"
    return "callback"


def budget_line(metrics: dict[str, Any]) -> str | None:
    """One line when training ended before the steps its LR schedule was built for (None
    otherwise): the bpd is then not the recipe's, whatever the machine."""
    planned, done = metrics.get("steps_planned"), metrics["steps"]
    if not planned or done >= planned or metrics.get("stopped_by") is None:
        return None
    if metrics.get("schedule_clock") == "time":
        return (
            f"glowlab: stopped by {metrics['stopped_by']} after {done} of {planned} planned "
            "steps; the LR schedule followed the clock (module.schedule_clock=time), so it "
            "annealed by then, but the run is not bit-reproducible"
        )
    return (
        f"glowlab: warning: stopped by {metrics['stopped_by']} after {done} of {planned} planned "
        "steps, so the LR schedule did not anneal and this bpd is not the recipe's; raise "
        "trainer.max_time (or lower trainer.max_steps) to train the whole schedule"
    )


def reported_keys(trainer: L.Trainer, module: FlowModule) -> dict[str, bool]:
    """``{key: higher_is_better}`` of what validation and test report: the module's metrics
    (``bpd``, ...) and those of a ``SampleQualityMonitor`` (``fid_...``)."""
    keys = dict(module.metric_keys)
    for callback in trainer.callbacks:
        if isinstance(callback, SampleQualityMonitor):
            keys.update(callback.metric_keys)
    return keys


def fit_and_test(cfg: DictConfig, run: RunObjects) -> dict[str, Any]:
    """Fit (optionally resuming), test the best checkpoint, return the run's metrics: ``val/``
    and ``test/`` + the main key of each of ``module.metrics`` (``bpd``, or ``noisy_bpd`` for
    Gaussian noise augmentation, ...), ``train/`` + the model's ``metric_name``, ``metric``,
    ``metric_directions`` (``{key: "lower" | "higher"}``, for ``glowlab-report``) and the
    run's facts."""
    trainer, module, datamodule = run.trainer, run.module, run.datamodule
    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    ckpt_path = resume_path(cfg)
    if ckpt_path is not None:
        step = check_resume(cfg, ckpt_path, run.model)
        if cfg.train:
            say(f"glowlab: resuming from {ckpt_path} (step {step})", log)
    if cfg.get("init_weights") is not None:
        start_from_weights(cfg, run.model)
    if cfg.train:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except (TrainingInterrupted, SIGTERMException) as error:
            stop = error if isinstance(error, TrainingInterrupted) else _interruption(run)
            if stop is None:
                raise
            stop_interrupted(cfg, stop)
        except OutputWriteError as error:
            message = _write_failed_message(cfg, error)
            raise OutputWriteError(error.errno, message, error.failure) from None
        except NonFiniteLossError as error:
            first = module.resumed_step or 0
            raise FloatingPointError(_nonfinite_message(cfg, error, first)) from None
        for key in reported_keys(trainer, module):
            metrics[f"val/{key}"] = _metric(trainer, f"val/{key}")
        key = metric_key("train/bpd", run.model.metric_name)
        metrics[key] = _metric(trainer, key)
    fitted = time.perf_counter()
    if cfg.test:
        best = _best_checkpoint(trainer) if cfg.train else ckpt_path
        trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
        for key in reported_keys(trainer, module):
            metrics[f"test/{key}"] = _metric(trainer, f"test/{key}")
        metrics["test_checkpoint"] = best
    metrics.update(
        metric=run.model.metric_name,
        metric_directions={
            key: "higher" if higher else "lower"
            for key, higher in reported_keys(trainer, module).items()
        },
        steps=trainer.global_step,
        steps_planned=module.total_steps,
        stopped_by=stopped_by(trainer) if cfg.train else None,
        schedule_clock=module.schedule_clock,
        epochs=trainer.current_epoch,
        wall_time_s=round(time.perf_counter() - started, 2),
        fit_time_s=round(fitted - started, 2),
        parameters=sum(p.numel() for p in run.model.parameters()),
        best_checkpoint=_best_checkpoint(trainer),
        sample_grid=_sample_grid_path(trainer),
        ranks_agree=module.ranks_agree,
        overrides=_overrides(),
    )
    return metrics


def _log_hparams(cfg: DictConfig, run: RunObjects, metrics: dict[str, Any]) -> None:
    """Send the resolved config and the final metrics to the loggers: TensorBoard's HPARAMS
    tab gets the config as hparams and ``hp/<stage>_<key>`` (``hp/val_bpd``, ``hp/test_bpd``,
    ``hp/train_bpd``, one per key of ``metric_directions``) as its metrics."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    keys = {metrics["metric"], *metrics["metric_directions"]}
    final = {
        f"hp/{k.replace('/', '_')}": float(v)
        for k, v in metrics.items()
        if k.partition("/")[2] in keys and v is not None
    }
    for logger in run.trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat, metrics=final or None)
        else:
            logger.log_hyperparams(flat)
            if final:
                logger.log_metrics(final, step=metrics.get("steps", 0))
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
    check_model_config(cfg.model)
    run = build_run(cfg)
    metrics = fit_and_test(cfg, run)
    if run.trainer.is_global_zero:
        _log_hparams(cfg, run, metrics)
        write_text(
            Path(cfg.paths.output_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n"
        )
        keys = [f"{stage}/{k}" for k in metrics["metric_directions"] for stage in ("val", "test")]
        summary = ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if metrics.get(k) is not None)
        summary = summary or f"no {' or '.join(keys)} (no validation or test ran)"
        say(f"glowlab: {summary} | steps {metrics['steps']} | {metrics['wall_time_s']:.0f} s", log)
        if (budget := budget_line(metrics)) is not None:
            say(budget, log)
        if "test_checkpoint" in metrics:
            tested = metrics["test_checkpoint"] or "the final weights (no validation ran)"
            say(f"glowlab: tested {tested}", log)
        say(f"glowlab: run dir {cfg.paths.output_dir}", log)
        if metrics.get("sample_grid"):
            say(f"glowlab: sample grid {metrics['sample_grid']}", log)
    return metrics


@hydra_app("glowlab-train", "train")
def main(cfg: DictConfig) -> float | None:
    """``glowlab-train``: train; returns the ``optimized_metric`` for a sweeper (None when it is
    missing or the job failed in a sweep: Optuna records a failed trial and goes on)."""
    metrics = run_cli("glowlab-train", train, cfg)
    if metrics is None:
        return None
    key = cfg.get("optimized_metric", "val/bpd")
    value = metrics.get(metric_key(key, metrics.get("metric", "bpd")))
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
