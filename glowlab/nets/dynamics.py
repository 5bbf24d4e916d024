"""Velocity fields ``f(t, x)`` for FFJORD's CNF blocks: convolutions that see the time as an
extra input channel (Grathwohl et al. 2019's ``ConcatConv2d``), softplus between them.

References: Grathwohl et al., "FFJORD", 2019; Chen et al., "Neural Ordinary Differential
Equations", 2018.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.validation import check_int


class ConcatConv2d(nn.Module):
    """3×3 convolution that sees the time as an extra constant input channel.

    ``(t, x) -> conv([x, t·1])``: ``()`` and ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        time = t.to(x).expand(x.shape[0], 1, x.shape[2], x.shape[3])  # (B, 1, H, W)
        return self.conv(torch.cat([x, time], dim=1))


class ConcatConvDynamics(nn.Module):
    """The velocity field ``f(t, x)``: ``layers`` concat convs with softplus between them.

    Channels ``C -> hidden -> ... -> hidden -> C``; the last conv starts at zero, so a fresh
    field is ``f ≡ 0`` and the flow is the identity. Softplus keeps ``f`` smooth, which the
    adaptive solvers and the trace (a derivative of ``f``) need.
    """

    def __init__(self, channels: int, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        for option, value in (("channels", channels), ("hidden", hidden), ("layers", layers)):
            check_int(option, value)
        widths = [channels] + [hidden] * (layers - 1) + [channels]
        self.convs = nn.ModuleList(ConcatConv2d(c_in, c_out) for c_in, c_out in pairwise(widths))
        nn.init.zeros_(self.convs[-1].conv.weight)
        nn.init.zeros_(self.convs[-1].conv.bias)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        h = x
        for conv in self.convs[:-1]:
            h = F.softplus(conv(t, h))
        return self.convs[-1](t, h)


__all__ = ["ConcatConv2d", "ConcatConvDynamics"]
