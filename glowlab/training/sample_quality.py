"""Sample quality during training: FID/KID of the model's samples every N validations and at
test (``callbacks/fid=on``), beside the bpd.

The metrics are ``glowlab.metrics``' sample metrics (``fid``, ``kid``); they draw ``n``
samples from the evaluated weights (EMA's average when it is on) and compare their features
with the cached reference statistics of the data. They are logged as ``val/<key>`` and
``test/<key>`` (``val/fid_fashion_mnist_classifier``, or ``val/fid`` with Inception
features), so TensorBoard, ``metrics.json``, the HParams table and ``glowlab-report`` carry
them. Sampling runs under a forked RNG: a run with the callback trains, and resumes, exactly
as one without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from glowlab.metrics import Batch, Metric, build_metrics
from glowlab.training.callbacks import evaluated_flow
from glowlab.validation import check_int


class SampleQualityMonitor(L.Callback):
    """Log the sample ``metrics`` (``fid``, ``kid``) after every ``every_n_validations``-th
    validation (None: never during training) and after the test when ``test`` is true.

    ``options`` go to every metric (``n`` samples and reference images, ``features``,
    ``weights``, ``reference`` split, ``temperature``, ``cache_dir``, ...; see
    ``glowlab.metrics.sample_quality``). Under DDP every rank draws the same ``n`` samples
    (seed ``seed``), so every rank logs the same number.
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("fid",),
        every_n_validations: int | None = 1,
        test: bool = True,
        seed: int = 0,
        **options: Any,
    ) -> None:
        check_int("callbacks.fid.every_n_validations", every_n_validations, optional=True)
        if not isinstance(test, bool):
            raise ValueError(f"callbacks.fid.test={test!r} must be true or false")
        self.names = [metrics] if isinstance(metrics, str) else [str(m) for m in metrics]
        self.every = every_n_validations
        self.test = test
        self.seed = seed
        self.options = options
        self.validations = 0
        self.metrics: list[Metric] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # rank 0 first: it trains and caches the feature classifier, which the others then load
        if trainer.is_global_zero:
            self.metrics = self._build(trainer, pl_module)
        trainer.strategy.barrier("sample_quality_setup")
        if not trainer.is_global_zero:
            self.metrics = self._build(trainer, pl_module)

    def _build(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Metric]:
        return build_metrics(
            self.names,
            pl_module.model,
            "callbacks.fid.metrics",
            {"samples"},
            datamodule=trainer.datamodule,
            seed=self.seed,
            **self.options,
        )

    @property
    def metric_keys(self) -> dict[str, bool]:
        """``{key: higher_is_better}`` of the logged keys (without ``val/``, ``test/``)."""
        return {metric.key: metric.higher_is_better for metric in self.metrics}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every is None:
            return
        self.validations += 1
        if self.validations % self.every == 0:
            self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.test:
            self._log(trainer, pl_module, "test")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = evaluated_flow(trainer, pl_module)
        batch = Batch.without_images(model, self.seed)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for metric in self.metrics:
                metric.to(pl_module.device)
                metric.reset()
                metric.update(batch)
                value = metric.compute()[metric.key]
                if value is not None:
                    pl_module.log(f"{stage}/{metric.key}", float(value), sync_dist=False)

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validations = state_dict["validations"]
