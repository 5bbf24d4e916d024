"""Callbacks: sample grids at several temperatures, and an invertibility monitor."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from glowlab.models.multiscale import MultiscaleFlow


def image_grid(images: torch.Tensor, n_bits: int, nrow: int | None = None) -> torch.Tensor:
    """Integer images ``(N, C, H, W)`` in ``[0, 2^n_bits)`` -> a float grid ``(C', H', W')``
    in ``[0, 1]`` for saving or TensorBoard."""
    floats = images.float() / (2**n_bits - 1)
    return make_grid(floats, nrow=nrow or max(1, int(len(images) ** 0.5)), padding=2, pad_value=1)


class SampleGrid(L.Callback):
    """After each validation, decode one fixed noise draw at every temperature.

    Writes ``{dirpath}/step{N}_T{t}.png`` and ``{dirpath}/latest_T{t}.png`` and logs the
    grids to TensorBoard under ``samples/T={t}``. Using the same standard-normal noise for
    every temperature and every epoch shows how the samples evolve.
    """

    def __init__(
        self,
        dirpath: str,
        n: int = 64,
        temperatures: tuple[float, ...] = (0.5, 0.7, 0.85, 1.0),
        seed: int = 0,
    ) -> None:
        if any(t < 0 for t in temperatures):
            raise ValueError(f"sample temperatures must be >= 0, got {list(temperatures)}")
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
        model: MultiscaleFlow = pl_module.model
        was_training = model.training
        model.eval()
        eps = [e.to(pl_module.device) for e in model.latent_noise(self.n, self.seed)]
        y = self._labels(model, pl_module.device)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for t in self.temperatures:
            grid = image_grid(model.sample(self.n, t, y=y, eps=eps).cpu(), model.n_bits)
            save_image(grid, self.dirpath / f"step{trainer.global_step:06d}_T{t}.png")
            save_image(grid, self.dirpath / f"latest_T{t}.png")
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
        model: MultiscaleFlow = pl_module.model
        y = labels if model.num_classes else None
        v, _ = model.dequantize(x.to(model._dtype()), noise=0.5)
        v_back = model.invert(model.flow(v, y).latents, y)
        pl_module.log("val/recon_max_abs", (v_back - v).abs().max(), sync_dist=True)
        errors = (model.dequantize.inverse(v_back) != x).sum().float()
        pl_module.log("val/recon_pixel_errors", errors, sync_dist=True, reduce_fx="sum")


class GuardedModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (atomic writes, best + ``last.ckpt``) with two changes:

    - nothing is written once the loss has gone non-finite, so ``last.ckpt`` keeps the last
      good weights;
    - ``last.ckpt`` is also written when training ends between validations (``max_steps`` or
      ``max_time`` reached mid-epoch), so the final weights are never lost.
    """

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if getattr(trainer.lightning_module, "nonfinite_step", None) is not None:
            return
        super()._save_checkpoint(trainer, filepath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
