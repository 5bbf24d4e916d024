"""Elementwise bijections: preprocessing (``Shift``, ``Logit``) and NICE's diagonal scaling.

Dequantisation (``Dequantize``) lives in ``glowlab.bijections.dequantization``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, constant_logdet, sum_except_batch


class Shift(Bijection):
    """``z = x - 0.5``: ``[0, 1)`` to ``[-0.5, 0.5)`` (Glow). logdet = 0."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x - 0.5, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z + 0.5


class Logit(Bijection):
    """``z = logit(α + (1 - 2α) x)`` on ``[0, 1)`` (RealNVP, α = 0.05).

    logdet = ``Σ [log(1 - 2α) - log p - log(1 - p)]`` with ``p = α + (1 - 2α) x``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"logit alpha={alpha!r} must be in [0, 0.5); RealNVP uses 0.05")
        self.alpha = alpha

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(p) - torch.log1p(-p)
        logdet = sum_except_batch(math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p))
        return z, logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


class DiagonalScale(Bijection):
    """``z = x · exp(s)`` with one learned ``s`` per dimension (NICE's final layer).

    Shapes ``(B, *shape) -> (B, *shape)``; logdet = ``Σ s``. References: Dinh et al., NICE, 2015.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), constant_logdet(x, self.log_scale.sum())

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z * torch.exp(-self.log_scale)
