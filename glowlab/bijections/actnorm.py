"""Activation normalisation with data-dependent initialisation (Glow), as a bijection."""

from __future__ import annotations

import torch
from torch import Tensor

from glowlab.bijections.base import Bijection, constant_logdet
from glowlab.nets.actnorm import HiddenActNorm


class ActNorm(HiddenActNorm, Bijection):
    """Per-channel affine map ``z = (x + bias) * exp(log_scale)``; logdet = ``H·W·Σ log_scale``.

    The map and its data-dependent initialisation are ``glowlab.nets.actnorm.HiddenActNorm``'s
    (the first training-mode batch gets zero mean and unit variance per channel, averaged
    over DDP ranks; ``initialized`` is saved with the weights).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    References: Kingma & Dhariwal, "Glow", 2018.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return self.normalize(x), constant_logdet(x, logdet)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z * torch.exp(-self.log_scale) - self.bias
