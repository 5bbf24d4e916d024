"""Bits per dim of real images and its parts: ``bpd = prior_bpd + logdet_bpd + dequant_bpd``.

``bpd = -log p(x) / (D ln 2)`` with ``log p(x) = log p(z) + logdet - log q(u | x)`` (nats,
``D = C·H·W``): ``prior_bpd`` from ``log p(z)``, ``logdet_bpd`` from the logdet (including
the dequantization's ``-D·n_bits·ln 2``), ``dequant_bpd`` from ``-log q(u|x)`` of a
variational dequantizer (0 for uniform). Over ``K`` draws each part is averaged in nats.

With Gaussian noise augmentation (TarFlow) the same sum is ``-log p(y)`` of the noisy image,
not a bound on the discrete data: the keys become ``noisy_bpd = noisy_prior_bpd +
noisy_logdet_bpd``, so that it is never read as (or compared with) a bpd.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from glowlab.metrics.base import Batch, Metric, per_image_values
from glowlab.metrics.registry import register

if TYPE_CHECKING:
    from glowlab.models.multiscale import MultiscaleFlow

UNIFORM_NOTE = (
    "mean over the noise draws of -log p((x + u) / 2^n_bits) with u ~ U[0,1)^D, in bits per "
    "dim (an upper bound on the discrete bpd, the number papers report); the model has no "
    "variational dequantizer, so no variational or importance-weighted bound is computed"
)
VARIATIONAL_NOTE = (
    "mean over the noise draws u ~ q(u|x) of -[log p((x + u) / 2^n_bits) - log q(u|x)], in "
    "bits per dim: the variational bound the model was trained on (Flow++), an upper bound "
    "on the discrete bpd"
)
NOISY_NOTE = (
    "noisy_bpd: mean over the noise draws eps ~ N(0, I) of -log p(y) / (D ln 2) for the noisy "
    "image y = x + 1/2 + 2^n_bits * (sigma/2) * eps in pixel units (Gaussian noise "
    "augmentation, TarFlow): a density of continuous noisy images, NOT a bound on the "
    "discrete bpd, so never compare it with the bpd of other models"
)


def bound_of(model: MultiscaleFlow) -> tuple[str, str]:
    """``(name, note)`` of the likelihood ``model`` reports as its bpd."""
    if model.noise_sigma is not None:
        return "Gaussian noise-augmented density", NOISY_NOTE
    if model.dequantizer is None:
        return "uniform dequantization bound", UNIFORM_NOTE
    return "variational dequantization bound", VARIATIONAL_NOTE


def sem(values: Tensor) -> float:
    """Standard error of the mean of ``values`` ``(N,)`` (NaN for a single value)."""
    return values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")


@register
class BitsPerDim(Metric):
    """Bits per dim and its parts (module docstring), keys ``bpd``, ``prior_bpd``,
    ``logdet_bpd``, ``dequant_bpd`` (``noisy_*`` for a noise-augmented model).

    Args:
        model: the flow (its dequantization decides the keys and the bound's note).
        per_image: keep every image's values in float64 and add ``bpd_sem``, the standard
            error of the mean over images (``glowlab-eval``); otherwise keep running means in
            the model's dtype (validation and test; float32: the numbers of earlier runs).
    """

    name = "bpd"
    higher_is_better = False

    def __init__(self, model: MultiscaleFlow, per_image: bool = False) -> None:
        super().__init__()
        self.prefix = "" if model.noise_sigma is None else "noisy_"
        self.bound, self.note = bound_of(model)
        parts = ("bpd", "prior_bpd", "logdet_bpd")
        parts += ("dequant_bpd",) if model.noise_sigma is None else ()
        self.keys = [self.prefix + part for part in parts]
        self.keep_per_image = per_image
        dtype = model._dtype()
        state = per_image_values if per_image else (lambda: MeanMetric().set_dtype(dtype))
        self.state = nn.ModuleDict({key: state() for key in self.keys})

    @property
    def key(self) -> str:
        return self.keys[0]

    def update(self, batch: Batch) -> None:
        nats = {
            "bpd": [out.log_prob for out in batch.outputs],
            "prior_bpd": [out.log_prior for out in batch.outputs],
            "logdet_bpd": [out.logdet for out in batch.outputs],
            "dequant_bpd": [-out.log_q for out in batch.outputs],
        }
        for key in self.keys:
            draws = torch.stack(nats[key.removeprefix(self.prefix)], dim=1)
            if self.keep_per_image:
                draws = draws.double()
            self.state[key].update(batch.to_bpd(draws.mean(dim=1)))

    def compute(self) -> dict[str, float | None]:
        if not self.keep_per_image:
            return {key: self.state[key].compute().item() for key in self.keys}
        values = {key: self.state[key].compute() for key in self.keys}
        result: dict[str, float | None] = {self.key: values[self.key].mean().item()}
        result[f"{self.key}_sem"] = sem(values[self.key])
        result.update({key: values[key].mean().item() for key in self.keys[1:]})
        return result

    def describe(self) -> dict[str, str]:
        return {"bound": self.bound, "bound_note": self.note}

    def per_image(self) -> dict[str, Tensor]:
        if not self.keep_per_image:
            return {}
        return {self.key: self.state[self.key].compute().reshape(-1).cpu()}
