"""The LightningModule: a thin wrapper that trains a flow by a pluggable objective."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor

from glowlab.compilation import compile_levels
from glowlab.metrics import IMAGE_LOOP, Batch, Metric, build_metrics
from glowlab.migration import CHECKPOINT_FORMAT
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.nets.actnorm import HiddenActNorm
from glowlab.objectives import Likelihood, Objective
from glowlab.training.epoch_boundary import at_epoch_end, start_next_epoch
from glowlab.training.rng import capture_rng_state, restore_rng_state
from glowlab.training.schedules import follow_the_clock
from glowlab.validation import check_positive, choose

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
TrainingObjective = Callable[[MultiscaleFlow, Tensor, Tensor | None], Objective]


RESUME_SCHEDULES = ("keep", "rebuild")
SCHEDULE_CLOCKS = ("steps", "time")


def _default_norm_clipping(plugin: Precision) -> bool:
    """True when ``plugin`` clips by norm with Lightning's default ``clip_grad_norm_`` call."""
    return type(plugin).clip_grad_by_norm is Precision.clip_grad_by_norm


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient at ``step``; the update was not taken, so
    the parameters are those of the last finite step. ``what`` is ``"loss"`` or
    ``"gradient"``."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"the {what} became NaN/Inf at step {step}")
        self.step, self.what = step, what


class FlowModule(L.LightningModule):
    """Trains a ``MultiscaleFlow`` by ``objective`` (``glowlab.objectives``: maximum
    likelihood by default) and validates and tests by the ``metrics`` of ``glowlab.metrics``.

    Logs ``train/<each objective term>`` and, at the end of each validation and test,
    ``{val,test}/<key>`` for every key of every metric: for ``bpd``, the true likelihood,
    ``*/bpd`` and its parts ``*/prior_bpd``, ``*/logdet_bpd``, ``*/dequant_bpd`` (a
    noise-augmented model: ``*/noisy_bpd`` and its ``noisy_*`` parts, the density of the noisy
    images, not a bpd of the data; ``glowlab.metrics.bpd``). Validation and test use a fixed
    noise draw per batch, so their numbers are reproducible. With the ``EMA`` callback,
    validation and test evaluate the averaged weights.

    Args:
        model: the flow.
        objective: ``objective(model, x, y) -> Objective(loss, logs)`` of a training step
            (``glowlab.objectives``; default ``Likelihood()``); its ``check(model)`` refuses a
            model it cannot train.
        optimizer: ``_partial_`` optimizer factory, called with the parameters.
        scheduler: ``_partial_`` schedule factory, called with ``(optimizer, total_steps)``;
            stepped every optimizer step.
        init_batch_size: images used for ActNorm's data-dependent initialisation, run once
            before the first step (all DDP ranks average their statistics).
        eval_seed: seed of the dequantisation noise in validation and test.
        channels_last: keep the convolution weights in NHWC layout (faster convolutions on
            recent CPUs and GPUs; the numbers are the same).
        compile: ``torch.compile`` mode for every level's flow steps (``default``,
            ``reduce-overhead``, ``max-autotune``), or None for eager; see
            ``glowlab.compilation``.
        resume_schedule: what a resumed run does when it plans more optimizer steps than the
            checkpoint's LR schedule spans (a larger ``max_steps``/``max_epochs``): None
            refuses with the choices, ``"keep"`` keeps the original schedule (the steps past
            its end run at its final LR: 0 for a cosine to 0), ``"rebuild"`` builds the
            schedule anew over the new total and continues it at the current step.
        metrics: names of the metrics validation and test report (``glowlab.metrics``
            registry, or ``package.module:name``); ``bpd`` must be one of them.
        schedule_clock: ``"steps"``: the LR schedule advances with the optimizer steps (exact,
            reproducible); ``"time"``: at ``max(step, total · elapsed / max_time)``, so a run
            that ``trainer.max_time`` stops early still anneals its schedule by then (for
            comparisons at a time budget; not bit-reproducible). Needs ``trainer.max_time``.
    """

    def __init__(
        self,
        model: MultiscaleFlow,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        init_batch_size: int = 512,
        eval_seed: int = 1234,
        channels_last: bool = False,
        compile: str | None = None,
        resume_schedule: str | None = None,
        objective: TrainingObjective | None = None,
        metrics: str | Sequence[str] = ("bpd",),
        schedule_clock: str = "steps",
    ) -> None:
        super().__init__()
        self.objective = Likelihood() if objective is None else objective
        self.objective.check(model)
        check_positive("init_batch_size", init_batch_size)
        if resume_schedule is not None:
            choose("module.resume_schedule", resume_schedule, RESUME_SCHEDULES)
        self.resume_schedule = resume_schedule
        self.schedule_clock = choose("module.schedule_clock", schedule_clock, SCHEDULE_CLOCKS)
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.init_batch_size = init_batch_size
        self.eval_seed = eval_seed
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile is not None:
            compile_levels(self.model, compile)
        names = [metrics] if isinstance(metrics, str) else [str(name) for name in metrics]
        if "bpd" not in names:
            raise ValueError(
                f"module.metrics={names} lacks bpd: validation and test always report the true "
                f"bpd (and checkpoints are chosen by it); use module.metrics={['bpd', *names]}"
            )
        # a plain dict, not submodules: metric states (and any feature network a metric
        # holds) stay out of the checkpoints
        self.stage_metrics: dict[str, list[Metric]] = {
            stage: build_metrics(names, model, "module.metrics", IMAGE_LOOP)
            for stage in ("val", "test")
        }
        self.ranks_agree: dict[str, bool] = {}
        self.nonfinite_step: int | None = None  # set when the loss goes NaN/Inf
        self.run_config: dict[str, Any] = {}
        self.total_steps: int | None = None  # of the LR schedule; restored on resume
        self.resumed_step: int | None = None  # the checkpoint's global step on resume

    # ---------------------------------------------------------------- set-up
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        config: dict[str, Any] = {"optimizer": optimizer}
        if self.scheduler_factory is not None:
            schedule = self.build_schedule(optimizer, self.schedule_total_steps())
            config["lr_scheduler"] = {"scheduler": schedule, "interval": "step"}
        return config

    def build_schedule(self, optimizer: torch.optim.Optimizer, total: int) -> Any:
        """The configured schedule over ``total`` steps, following the wall clock of
        ``trainer.max_time`` when ``schedule_clock="time"``."""
        schedule = self.scheduler_factory(optimizer, total_steps=total)
        if self.schedule_clock == "time":
            timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
            if timer is None or not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
                raise ValueError(
                    "module.schedule_clock=time needs trainer.max_time (the budget the schedule "
                    "follows) and a LambdaLR schedule (glowlab's scheduler presets); set "
                    'trainer.max_time="00:00:10:00" or module.schedule_clock=steps'
                )
            # rank 0's clock for every rank: DDP replicas must step with the same LR
            strategy = self.trainer.strategy
            follow_the_clock(schedule, total, lambda: strategy.broadcast(_budget_spent(timer)))
        return schedule

    def schedule_total_steps(self) -> int:
        """Optimizer steps the LR schedule spans: the run's estimate when it starts, and the
        value saved in the checkpoint when it resumes (so the schedule is the original one
        even if ``max_steps``/``max_epochs`` or the data changed, unless ``resume_schedule``
        rebuilds it: see :meth:`check_schedule_length`)."""
        if self.total_steps is None:
            self.total_steps = int(self.trainer.estimated_stepping_batches)
        return self.total_steps

    def check_schedule_length(self) -> None:
        """On resume (after the loops and loaders are restored, so that estimating the run's
        steps cannot set up the train loader before its saved position is loaded): a run that
        plans more optimizer steps than the schedule spans is refused, or keeps the schedule,
        or rebuilds it over the new total at the current step, per ``resume_schedule``."""
        schedule = self.lr_schedulers()
        planned = int(self.trainer.estimated_stepping_batches)
        if schedule is None or self.resumed_step is None or planned <= self.total_steps:
            return
        if self.resume_schedule is None:
            raise ValueError(
                f"this run plans {planned} optimizer steps but the checkpoint's LR schedule "
                f"spans {self.total_steps} (it stopped at step {self.resumed_step}), so the "
                "steps past its end would run at its final LR (0 for a cosine to 0); pass "
                "module.resume_schedule=rebuild to build the schedule over "
                f"{planned} steps and continue it, or module.resume_schedule=keep to keep it"
            )
        if self.resume_schedule == "keep":
            return
        if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                f"module.resume_schedule=rebuild needs a LambdaLR schedule (glowlab's "
                f"module/scheduler presets), not {type(schedule).__name__}; use keep"
            )
        rebuilt = self.build_schedule(schedule.optimizer, planned)
        schedule.lr_lambdas = rebuilt.lr_lambdas
        step = schedule.last_epoch
        for group, base, factor in zip(
            schedule.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(step)  # the restored optimizer holds the old LR
        schedule._last_lr = [group["lr"] for group in schedule.optimizer.param_groups]
        self.total_steps = planned

    def on_train_start(self) -> None:
        self.check_schedule_length()
        if not self.actnorms_initialized():
            self.initialize_actnorm(self.trainer.train_dataloader)
            self.ranks_agree["after_actnorm_init"] = self.parameters_agree_across_ranks()

    def on_train_end(self) -> None:
        self.ranks_agree["at_end"] = self.parameters_agree_across_ranks()

    @torch.no_grad()
    def parameters_agree_across_ranks(self) -> bool:
        """True when every DDP rank holds the same parameters and buffers (checksums)."""
        state = [t.detach().double() for t in self.model.state_dict().values()]
        fingerprint = torch.stack([sum(t.sum() for t in state), sum((t * t).sum() for t in state)])
        gathered = self.all_gather(fingerprint).reshape(-1, 2)
        return bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-12))

    def actnorms_initialized(self) -> bool:
        return all(
            bool(m.initialized) for m in self.model.modules() if isinstance(m, HiddenActNorm)
        )

    @torch.no_grad()
    def initialize_actnorm(self, batches) -> None:
        """One training-mode forward on ``init_batch_size`` images initialises every ActNorm."""
        xs, ys, count = [], [], 0
        for x, y in batches:
            xs.append(x)
            ys.append(y)
            count += x.shape[0]
            if count >= self.init_batch_size:
                break
        x = torch.cat(xs)[: self.init_batch_size].to(self.device)
        y = torch.cat(ys)[: self.init_batch_size].to(self.device)
        was_training = self.model.training
        self.model.train()
        self.model(x, self._labels(y))
        self.model.train(was_training)

    # ---------------------------------------------------------------- steps
    def _labels(self, y: Tensor) -> Tensor | None:
        return y if self.model.num_classes else None

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        objective = self.objective(self.model, x, self._labels(y))
        loss = objective.loss
        self._stop_unless_finite(torch.isfinite(loss).all(), "loss")
        for name, value in objective.logs.items():
            self.log(f"train/{name}", value, prog_bar=name == self.model.metric_name)
        return loss

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, then a stop if the gradient is NaN/Inf (a finite loss can
        still have one; clipping cannot help, its norm is NaN/Inf too), before the update.

        With the usual norm clipping the check reuses the norm the clipping computes (the same
        ``clip_grad_norm_`` call Lightning's default precision makes), so it costs nothing."""
        plugin = self.trainer.precision_plugin
        by_norm = gradient_clip_algorithm in (None, "norm")
        if gradient_clip_val and by_norm and _default_norm_clipping(plugin):
            params = list(plugin.main_params(optimizer))
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.get_total_norm([g for g in grads if g is not None])
        self._stop_unless_finite(torch.isfinite(norm), "gradient")

    def _stop_unless_finite(self, finite: Tensor, what: str) -> None:
        """Raise :class:`NonFiniteLossError` on every rank when ``finite`` is False on any: no
        update, validation or checkpoint follows, so the last checkpoint keeps finite weights
        (validating non-finite weights would fail, e.g. inverting a singular 1×1 weight)."""
        if not self.trainer.strategy.reduce_boolean_decision(bool(finite), all=True):
            self.nonfinite_step = self.global_step
            raise NonFiniteLossError(self.global_step, what)

    @property
    def metric_keys(self) -> dict[str, bool]:
        """``{key: higher_is_better}`` of the metrics' main keys (``bpd`` or ``noisy_bpd``,
        ...): what ``metrics.json``, HParams and ``glowlab-report`` carry as ``val/<key>``,
        ``test/<key>``."""
        return {metric.key: metric.higher_is_better for metric in self.stage_metrics["val"]}

    def _start_metrics(self, stage: str) -> None:
        for metric in self.stage_metrics[stage]:
            metric.to(self.device)
            metric.reset()

    def _eval_step(self, stage: str, batch, batch_idx: int) -> None:
        x, y = batch
        images = Batch(self.model, x, self._labels(y), seed=self.eval_seed + batch_idx)
        for metric in self.stage_metrics[stage]:
            metric.update(images)

    def _log_metrics(self, stage: str) -> None:
        """Log every metric's keys as ``{stage}/<key>``. ``compute`` has summed the states
        over DDP ranks, so every rank holds the same value and ``max`` over ranks is exact
        (``sync_dist`` only keeps Lightning from asking for it)."""
        for metric in self.stage_metrics[stage]:
            for key, value in metric.compute().items():
                if value is not None:
                    self.log(
                        f"{stage}/{key}",
                        value,
                        prog_bar=key == self.model.metric_name,
                        sync_dist=True,
                        reduce_fx="max",
                    )

    def on_validation_epoch_start(self) -> None:
        self._start_metrics("val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._start_metrics("test")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["glowlab"] = {
            "rng_state": capture_rng_state(),
            "image_shape": list(self.model.image_shape),
            "n_bits": self.model.n_bits,
            "config": self.run_config,
            "total_steps": self.total_steps,
            "format": CHECKPOINT_FORMAT,
        }
        trainer = self._trainer
        if trainer is not None and at_epoch_end(checkpoint, trainer.num_training_batches):
            start_next_epoch(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "glowlab" not in checkpoint:
            raise ValueError(
                "this checkpoint was not written by glowlab (no 'glowlab' entry); "
                "pass the last.ckpt or best checkpoint of a glowlab run"
            )
        # Resume the random streams where the interrupted run saved them. Nothing before the
        # first training batch draws from them: evaluation uses its own generators.
        restore_rng_state(checkpoint["glowlab"]["rng_state"])
        # on_load_checkpoint runs before configure_optimizers: the schedule keeps its length
        self.total_steps = checkpoint["glowlab"].get("total_steps")
        self.resumed_step = checkpoint.get("global_step")


def _budget_spent(timer: Timer) -> float:
    """The fraction of ``trainer.max_time`` that training has used (validation included)."""
    elapsed = timer.time_elapsed("train")
    remaining = timer.time_remaining("train") or 0.0
    return elapsed / max(elapsed + remaining, 1e-9)
