"""Callbacks: EMA of the weights, sample grids, an invertibility monitor, checkpoints, and
stopping at a signal."""

from __future__ import annotations

import itertools
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from glowlab.images import image_grid
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.outputs import save_image
from glowlab.validation import check_int, check_range


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights: Lightning's ``EMAWeightAveraging`` with the
    guarantees glowlab's evaluation, tools and exact resume rely on.

    After every counted optimizer step ``k`` (every ``update_every_n_steps`` steps, from
    ``update_starting_at_step``), ``θ̄_1 = θ_1`` and ``θ̄_k = d·θ̄_{k−1} + (1 − d)·θ_k`` for each
    parameter, ``d = decay`` (Flow++ used 0.999; no bias correction). Buffers are not averaged
    (ActNorm's ``initialized`` flag, permutations): they are copied from the live model.

    - validation (sanity check included) evaluates ``θ̄``, and so do the sample grid and the
      reconstruction check (``evaluated_flow``);
    - every checkpoint's ``state_dict`` holds ``θ̄`` (what ``trainer.test`` and every tool load),
      ``current_model_state`` the live weights ``θ`` and ``averaging_state`` the count, so a
      resume continues both exactly (also from a save in the middle of a validation);
    - after ``fit`` the module holds ``θ̄`` and ``test`` evaluates ``θ̄``.

    Changes to Lightning's class: the swaps copy in place through the parameters, ``test``
    keeps the ``θ̄`` of ``state_dict`` instead of reloading the live weights, buffers whose
    shape changed in training (power-iteration vectors) are re-matched, and fit ends with a
    swap rather than a copy, so the live weights stay in the last checkpoint.

    Args:
        decay: ``d`` in ``[0, 1)``.
        update_every_n_steps: update after every N-th optimizer step.
        update_starting_at_step: first (zero-based) step index to update at (None: 0).
        device: where ``θ̄`` lives (None: the model's device; ``"cpu"`` saves GPU memory).

    References: Polyak & Juditsky, "Acceleration of stochastic approximation by averaging",
    1992; Ho et al., "Flow++", 2019 (EMA 0.999).
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise ValueError(
                f"callbacks.ema.decay={decay!r} must be in [0, 1) (0.999 is usual, 0 keeps "
                "the last weights)"
            )
        for option, value, low in (
            ("update_every_n_steps", update_every_n_steps, 1),
            ("update_starting_at_step", update_starting_at_step, 0),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ValueError(f"callbacks.ema.{option}={value!r} must be an integer >= {low}")
        super().__init__(
            device=device,
            use_buffers=False,
            decay=float(decay),
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        self.decay = float(decay)
        self.swapped = False  # True while the module holds θ̄ and the average model holds θ

    # ------------------------------------------------------------------ the weights
    @property
    def averaging(self) -> bool:
        """True while training keeps an average (from the start of ``fit``)."""
        return self._average_model is not None

    def averaged_module(self, pl_module: L.LightningModule) -> L.LightningModule:
        """The module that holds ``θ̄`` right now (``pl_module`` itself while swapped)."""
        if self._average_model is None or self.swapped:
            return pl_module
        return self._average_model.module

    def _pairs(self, pl_module: L.LightningModule):
        average = self._average_model.module
        return zip(
            itertools.chain(average.parameters(), average.buffers()),
            itertools.chain(pl_module.parameters(), pl_module.buffers()),
            strict=True,
        )

    def _match_buffers(self, pl_module: L.LightningModule) -> None:
        """Give the average model's buffers the live ones' shapes where training changed them."""
        average = self._average_model.module
        for (name, mine), (_, live) in zip(
            average.named_buffers(), pl_module.named_buffers(), strict=True
        ):
            if mine.shape != live.shape:
                owner, _, leaf = name.rpartition(".")
                module = average.get_submodule(owner) if owner else average
                module._buffers[leaf] = live.detach().clone().to(mine.device)

    @torch.no_grad()
    def _swap_models(self, pl_module: L.LightningModule) -> None:
        self._match_buffers(pl_module)
        for average, current in self._pairs(pl_module):
            held = average.detach().clone()
            average.copy_(current.detach())
            current.copy_(held)
        self.swapped = not self.swapped

    @torch.no_grad()
    def _copy_average_to_current(self, pl_module: L.LightningModule) -> None:
        self._match_buffers(pl_module)
        for average, current in self._pairs(pl_module):
            current.copy_(average.detach())

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.swapped = False
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._average_model.module.eval()  # never trained: only swapped and sampled

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._average_model is not None:
            self._match_buffers(pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._average_model is not None and not self.swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._average_model is not None and self.swapped:
            self._swap_models(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None and not self.swapped:
            self._swap_models(pl_module)  # the module keeps θ̄; θ stays saved (on_save_checkpoint)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None or not self.swapped:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            return
        # swapped: checkpoint["state_dict"] (the module's) already holds θ̄; θ is in the average
        state = self._average_model.state_dict()
        checkpoint["current_model_state"] = {
            name[len("module.") :]: value
            for name, value in state.items()
            if name.startswith("module.")
        }
        checkpoint["averaging_state"] = {
            name: value for name, value in state.items() if not name.startswith("module.")
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING or self._average_model is None:
            return  # test/validate: the module keeps state_dict, which is θ̄
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def evaluated_flow(trainer: L.Trainer, pl_module: L.LightningModule) -> MultiscaleFlow:
    """The flow whose weights validation reports: ``θ̄`` when an ``EMA`` callback averages,
    else the module's own."""
    for callback in trainer.callbacks:
        if isinstance(callback, EMA):
            return callback.averaged_module(pl_module).model
    return pl_module.model


class SampleGrid(L.Callback):
    """After each validation, decode one fixed noise draw at every temperature.

    Writes ``{dirpath}/step{N}_T{t}.png`` and ``{dirpath}/latest_T{t}.png`` and logs the
    grids to TensorBoard under ``samples/T={t}``. Using the same standard-normal noise for
    every temperature and every epoch shows how the samples evolve. With ``EMA`` the grids
    show the averaged weights (``evaluated_flow``).
    """

    def __init__(
        self,
        dirpath: str,
        n: int = 64,
        temperatures: tuple[float, ...] = (0.5, 0.7, 0.85, 1.0),
        seed: int = 0,
    ) -> None:
        check_int("n", n)
        for t in temperatures:
            check_range("sample temperature", t, float, 0)
        self.dirpath = Path(dirpath)
        self.n = n
        self.temperatures = tuple(float(t) for t in temperatures)
        self.seed = seed
        self.latest: dict[float, Path] = {}

    def _labels(self, model: MultiscaleFlow, device: torch.device) -> torch.Tensor | None:
        if not model.num_classes:
            return None
        return (torch.arange(self.n) % model.num_classes).to(device)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        model = evaluated_flow(trainer, pl_module)
        was_training = model.training
        model.eval()
        eps = [e.to(pl_module.device) for e in model.latent_noise(self.n, self.seed)]
        y = self._labels(model, pl_module.device)
        for t in self.temperatures:
            grid = image_grid(model.sample(self.n, t, y=y, eps=eps).cpu(), model.n_bits)
            save_image(
                grid, self.dirpath / f"step{trainer.global_step:06d}_T{t}.png", "sample grid"
            )
            save_image(grid, self.dirpath / f"latest_T{t}.png", "sample grid")
            self.latest[t] = self.dirpath / f"latest_T{t}.png"
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_image"):
                    experiment.add_image(f"samples/T={t}", grid, trainer.global_step)
        model.train(was_training)


class ReconstructionMonitor(L.Callback):
    """After each validation, check that the flow still inverts: encode ``n`` validation
    images and decode them. Logs ``val/recon_max_abs`` (largest error in ``[0, 1)`` units,
    before rounding) and ``val/recon_pixel_errors`` (pixels that round to another value).
    """

    def __init__(self, n: int = 32) -> None:
        check_int("n", n)
        self.n = n
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self._batch = (batch[0][: self.n], batch[1][: self.n])

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None:
            return
        x, labels = self._batch
        model = evaluated_flow(trainer, pl_module)
        y = labels if model.num_classes else None
        v, _ = model.dequantize(x.to(model._dtype()), noise=0.5)
        v_back = model.invert(model.flow(v, y).latents, y)
        pl_module.log("val/recon_max_abs", (v_back - v).abs().max(), sync_dist=True)
        errors = (model.dequantize.inverse(v_back) != x).sum().float()
        pl_module.log("val/recon_pixel_errors", errors, sync_dist=True, reduce_fx="sum")


def ends_epoch(trainer: L.Trainer, batch_idx: int) -> bool:
    """True in the hooks of the last training batch of an epoch.

    A checkpoint written there (between that batch and the epoch-end validation) is one
    Lightning cannot resume exactly: it counts the epoch as finished, so the epoch-end
    validation and ``on_train_epoch_end`` never run and the epoch counter runs one ahead.
    Writers wait for ``on_train_epoch_end`` instead (after that validation), a state Lightning
    resumes exactly.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.is_last_batch or batch_idx + 1 >= trainer.num_training_batches


class GuardedModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (best by ``monitor`` + ``last.ckpt``) with ``last.ckpt``
    always the latest state:

    - ``last.ckpt`` is written at every checkpoint event (each validation, improved or not),
      every ``last_every_n_steps`` optimizer steps, and when training ends (``max_steps`` or
      ``max_time`` reached mid-epoch) — each write atomic through ``AtomicCheckpointIO``;
    - nothing is written once the loss has gone non-finite, so ``last.ckpt`` keeps the last
      good weights.

    Args:
        last_every_n_steps: also rewrite ``last.ckpt`` every N optimizer steps (None: only at
            checkpoint events and the end).
    """

    def __init__(self, *args, last_every_n_steps: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if last_every_n_steps is not None and (
            isinstance(last_every_n_steps, bool)
            or not isinstance(last_every_n_steps, int)
            or last_every_n_steps < 1
        ):
            raise ValueError(
                f"last_every_n_steps={last_every_n_steps!r} must be a positive integer or null; "
                "set callbacks.model_checkpoint.last_every_n_steps"
            )
        self.last_every_n_steps = last_every_n_steps
        self.last_saved_step: int | None = None

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if getattr(trainer.lightning_module, "nonfinite_step", None) is not None:
            return
        super()._save_checkpoint(trainer, filepath)
        if Path(filepath).stem.startswith(self.CHECKPOINT_NAME_LAST):
            self.last_saved_step = trainer.global_step

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        # No validation has run yet (a run shorter than an epoch and its validation
        # interval): there is no best to keep, and nothing to warn about; last.ckpt is written.
        if self.monitor is None or self.monitor in monitor_candidates:
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def save_last_now(self, trainer: L.Trainer) -> str | None:
        """Write ``last.ckpt`` now (no effect on when the best checkpoint is written)."""
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return None
        step_saved = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = step_saved  # let validation still save the best
        return self.last_model_path or None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not ends_epoch(trainer, batch_idx):  # else on_train_epoch_end writes it
            self._save_last_if_due(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_due(trainer)

    def _save_last_if_due(self, trainer: L.Trainer) -> None:
        every, step = self.last_every_n_steps, trainer.global_step
        if every and step % every == 0 and self.last_saved_step != step:
            self.save_last_now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and self.last_saved_step != trainer.global_step:
            self.save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.last_saved_step != trainer.global_step and not trainer.fast_dev_run:
            self.save_last_now(trainer)


class StopOnSignal(L.Callback):
    """SIGTERM or SIGINT during training: finish the current batch, write a resumable
    ``last.ckpt`` (the state between two batches, like a step checkpoint) and raise
    :class:`TrainingInterrupted`, which ``glowlab-train`` turns into one line with the resume
    command and exit status ``128 + signal``.

    Lightning's own SIGTERM handler (which stops at the next batch end without saving, or in
    the middle of a validation) is composed with this one; a second SIGINT aborts at once
    without saving.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, fallback_path: str) -> None:
        self.fallback_path = fallback_path
        self.received: int | None = None
        self.interrupted: TrainingInterrupted | None = None
        self._previous: dict[int, object] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self.received = None
        self.interrupted = None
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # submitit's handler for the requeue signal would keep Lightning's from installing
            signal.signal(environment.requeue_signal, signal.SIG_DFL)
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            if threading.current_thread() is threading.main_thread():
                signal.signal(signum, handler)
        self._previous = {}

    def _handler(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now, without saving
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None and not ends_epoch(trainer, batch_idx):
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is not None:  # a signal in an epoch's last batch stops here
            self._stop(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning's SIGTERM handling may stop inside a validation, between two batches
        expected = not isinstance(exception, TrainingInterrupted | KeyboardInterrupt)
        if self.received is not None and expected:
            self._stop(trainer, raise_=False)

    def _stop(self, trainer: L.Trainer, raise_: bool = True) -> None:
        signum = int(self.received)
        path = None
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, GuardedModelCheckpoint):
            path = checkpoint.save_last_now(trainer)
        elif getattr(trainer.lightning_module, "nonfinite_step", None) is None:
            trainer.save_checkpoint(self.fallback_path)
            path = self.fallback_path
        self.interrupted = TrainingInterrupted(signum, path, trainer.global_step)
        if raise_:
            raise self.interrupted


class TrainingInterrupted(Exception):
    """Training stopped at a signal; ``path`` is the resumable checkpoint (None: none)."""

    def __init__(self, signum: int, path: str | None, step: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}; checkpoint {path}")
        self.signum, self.path, self.step, self.name = signum, path, step, name
