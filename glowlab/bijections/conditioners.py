"""Conditioner networks for coupling layers: ``(B, C_in, H, W) -> (B, C_out, H, W)``.

Each ends in a zero-initialised layer, so a fresh coupling starts (close to) the identity.
Use them through a ``Conditioner`` factory, e.g.
``functools.partial(GlowConditioner, hidden=512)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from glowlab.bijections.actnorm import HiddenActNorm


class ZeroConv2d(nn.Module):
    """3×3 convolution starting at zero, with Glow's learned output scale ``exp(3·logs)``."""

    def __init__(self, in_channels: int, out_channels: int, log_scale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.log_scale_factor = log_scale_factor

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(self.logs * self.log_scale_factor)


class GlowConditioner(nn.Module):
    """Glow's network: conv3×3 → ActNorm → ReLU → conv1×1 → ActNorm → ReLU → zero conv3×3.

    References: Kingma & Dhariwal, "Glow", 2018.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            HiddenActNorm(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1, bias=False),
            HiddenActNorm(hidden),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _ResidualBlock(nn.Module):
    """``x + conv3×3(ReLU(conv3×3(ReLU(x))))`` with weight-normalised convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            weight_norm(nn.Conv2d(channels, channels, 3, padding=1)),
            nn.ReLU(),
            weight_norm(nn.Conv2d(channels, channels, 3, padding=1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetConditioner(nn.Module):
    """RealNVP's conditioner: weight-normalised ResNet of ``blocks`` residual blocks.

    Batch norm of the original is left out (it makes train and eval densities differ);
    the flow's ActNorm layers play its role. References: Dinh et al., "Real NVP", 2017.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 8
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            weight_norm(nn.Conv2d(in_channels, hidden, 3, padding=1)),
            *[_ResidualBlock(hidden) for _ in range(blocks)],
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
