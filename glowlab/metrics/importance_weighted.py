"""The importance-weighted bound of a variational dequantizer (Burda et al. 2016; Flow++).

With ``K`` draws ``u_k ~ q(u | x)`` and log weights ``w_k = log p(x + u_k) - log q(u_k | x)``
(nats), the dequantization bound ``(1/K) Σ_k w_k`` (``bpd``) and the importance-weighted
bound ``log (1/K) Σ_k exp(w_k)`` both lower-bound ``log P(x)`` in expectation; the latter is
never below the former, equals it at ``K = 1`` and tightens as ``K`` grows. Both come from
the same draws (``Batch.outputs``); bits per dim ``= -bound / (D ln 2)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from glowlab.metrics.base import Batch, Metric, per_image_values
from glowlab.metrics.bpd import nats_to_bpd, sem
from glowlab.metrics.registry import register

if TYPE_CHECKING:
    from glowlab.models.multiscale import MultiscaleFlow

NOTE = (
    "-log (1/K sum_k exp(log p((x + u_k) / 2^n_bits) - log q(u_k|x))) / (D ln 2) over the "
    "K = samples draws u_k ~ q(u|x), the same draws as the variational bound: never above "
    "it, equal at K = 1, and tending to the discrete bpd -log2 P(x) / D as K grows "
    "(Burda et al. 2016; the number Flow++ reports)"
)
ABSENT_NOTE = (
    "null: the model dequantizes uniformly (no variational dequantizer q(u|x) to "
    "importance-weight); the uniform dequantization bound is the number to report"
)


def importance_weighted(log_weights: Tensor) -> Tensor:
    """``log (1/K) Σ_k exp(w_k)``, ``(B,)``, of log weights ``(B, K)``."""
    return torch.logsumexp(log_weights, dim=1) - math.log(log_weights.shape[1])


@register
class ImportanceWeightedBound(Metric):
    """``importance_weighted_bpd`` and its standard error over images; None (with a note in
    ``importance_weighted_note``) for a model without a variational dequantizer. Keeps every
    image's float64 value (``per_image``)."""

    name = "iw_bound"
    higher_is_better = False

    def __init__(self, model: MultiscaleFlow) -> None:
        super().__init__()
        self.defined = model.dequantizer is not None and model.noise_sigma is None
        self.values = per_image_values()

    @property
    def key(self) -> str:
        return "importance_weighted_bpd"

    def update(self, batch: Batch) -> None:
        if self.defined:
            self.values.update(nats_to_bpd(importance_weighted(batch.log_weights), batch.dims))

    def compute(self) -> dict[str, float | None]:
        if not self.defined:
            return {self.key: None, f"{self.key}_sem": None}
        values = self.per_image()[self.key]
        return {self.key: values.mean().item(), f"{self.key}_sem": sem(values)}

    def describe(self) -> dict[str, str]:
        return {"importance_weighted_note": NOTE if self.defined else ABSENT_NOTE}

    def per_image(self) -> dict[str, Tensor]:
        if not self.defined:
            return {}
        return {self.key: self.values.compute().reshape(-1).cpu()}
