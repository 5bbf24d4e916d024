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
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from glowlab.metrics.base import Batch, Metric, per_image_values
from glowlab.metrics.registry import register

if TYPE_CHECKING:
    from glowlab.models.multiscale import FlowOutput, MultiscaleFlow

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


def nats_to_bpd(log_prob: Tensor, dims: int) -> Tensor:
    """``-log_prob / (D ln 2)``: nats of an image of ``D`` pixels -> bits per dim."""
    return -log_prob / (dims * math.log(2.0))


NOISY_PREFIX = "noisy_"
"""Prefixes every key of a noise-augmented model (its numbers are not a discrete-data bpd)."""


def bpd_keys(noisy: bool) -> list[str]:
    """The reported keys, in order: ``bpd``, ``prior_bpd``, ``logdet_bpd``, ``dequant_bpd``, or
    for a noise-augmented model (``noisy``) ``noisy_bpd``, ``noisy_prior_bpd``,
    ``noisy_logdet_bpd``."""
    parts = ("bpd", "prior_bpd", "logdet_bpd", *(() if noisy else ("dequant_bpd",)))
    return [(NOISY_PREFIX if noisy else "") + part for part in parts]


def bpd_parts(
    outputs: Sequence[FlowOutput], dims: int, noisy: bool = False, float64: bool = False
) -> dict[str, Tensor]:
    """The reported numbers, each ``(B,)``, from the model's outputs under one or more draws
    (each part averaged over the draws in nats, in float64 if ``float64``, then converted):
    ``bpd = prior_bpd + logdet_bpd + dequant_bpd``, or ``noisy_bpd = noisy_prior_bpd +
    noisy_logdet_bpd`` for a noise-augmented model (``noisy``). Differentiable."""
    nats = (
        lambda out: out.log_prob,
        lambda out: out.log_prior,
        lambda out: out.logdet,
        lambda out: -out.log_q,
    )  # in the order of bpd_keys; a noisy model has no dequant_bpd, so zip stops before it
    parts = {}
    for key, part in zip(bpd_keys(noisy), nats, strict=False):
        draws = torch.stack([part(out) for out in outputs], dim=1)  # (B, draws)
        parts[key] = nats_to_bpd((draws.double() if float64 else draws).mean(dim=1), dims)
    return parts


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
        self.noisy = model.noise_sigma is not None
        self.bound, self.note = bound_of(model)
        self.keys = bpd_keys(self.noisy)
        self.keep_per_image = per_image
        dtype = model._dtype()
        state = per_image_values if per_image else (lambda: MeanMetric().set_dtype(dtype))
        self.state = nn.ModuleDict({key: state() for key in self.keys})

    @property
    def key(self) -> str:
        return self.keys[0]

    def update(self, batch: Batch) -> None:
        parts = bpd_parts(batch.outputs, batch.dims, self.noisy, float64=self.keep_per_image)
        for key, values in parts.items():
            self.state[key].update(values)

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
