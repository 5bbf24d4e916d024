"""Coupling layers (NICE, RealNVP, Glow) with channel or checkerboard masks.

A coupling splits ``x`` into a part ``x_a`` that passes unchanged and a part ``x_b`` that is
transformed elementwise with parameters computed from ``x_a`` by a conditioner network:
``z_b = x_b · s(x_a) + t(x_a)`` (affine) or ``z_b = x_b + t(x_a)`` (additive).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.validation import choose

Conditioner = Callable[[int, int], nn.Module]
"""Factory ``(in_channels, out_channels) -> net``, net: ``(B, in, H, W) -> (B, out, H, W)``."""

MASKS = ("channel", "checkerboard")
TRANSFORMS = ("affine", "additive")
SCALES = ("sigmoid", "exp_tanh")


def checkerboard_mask(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """``(1, 1, H, W)`` mask, 1 where ``(i + j + parity)`` is even (the pixels kept as is)."""
    rows = torch.arange(height, device=like.device).view(-1, 1)
    cols = torch.arange(width, device=like.device).view(1, -1)
    return ((rows + cols + parity) % 2 == 0).to(like.dtype).view(1, 1, height, width)


class Coupling(Bijection):
    """Affine or additive coupling with a channel or checkerboard mask.

    - ``mask="channel"``: ``x_a`` is one half of the channels (``parity`` picks which);
      the conditioner maps ``C_a -> n·C_b`` channels.
    - ``mask="checkerboard"``: ``x_a`` is the pixels where ``(i + j + parity)`` is even; the
      conditioner sees ``x·m`` and ``m`` (``C + 1`` channels) and emits ``n·C`` channels, of
      which only the masked-out pixels are used.

    Affine scale: ``"sigmoid"`` uses ``s = sigmoid(h + 2)`` (Glow); ``"exp_tanh"`` uses
    ``s = exp(a · tanh(h))`` with a learned per-channel ``a`` (RealNVP). logdet = ``Σ_b log s``.

    ``bf16_conditioner=True`` runs only the conditioner network under bfloat16 autocast; its
    output is cast back, so scales, shifts and the logdet are computed in the input's dtype.
    Forward and inverse evaluate the conditioner on the same ``x_a``, so the layer stays
    exactly invertible.

    References: Dinh et al., NICE (2015) and Real NVP (2017); Kingma & Dhariwal, Glow (2018).
    """

    def __init__(
        self,
        channels: int,
        conditioner: Conditioner,
        mask: str = "channel",
        transform: str = "affine",
        parity: int = 0,
        scale: str = "sigmoid",
        bf16_conditioner: bool = False,
    ) -> None:
        super().__init__()
        self.mask = choose("mask", mask, MASKS)
        self.transform = choose("coupling", transform, TRANSFORMS)
        self.scale = choose("scale", scale, SCALES)
        self.parity = parity % 2
        self.bf16_conditioner = bf16_conditioner
        if mask == "channel" and channels % 2:
            raise ValueError(
                f"a channel-mask coupling needs an even number of channels, got {channels}; "
                "use mask='checkerboard' or squeeze first"
            )
        n_params = 2 if transform == "affine" else 1
        if mask == "channel":
            in_channels, out_channels = channels // 2, n_params * (channels // 2)
        else:
            in_channels, out_channels = channels + 1, n_params * channels
        self.net = conditioner(in_channels, out_channels)
        if transform == "affine" and scale == "exp_tanh":
            self.tanh_scale = nn.Parameter(torch.ones(1, out_channels // 2, 1, 1))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return ``(conditioner input, x_b, mask)``; ``mask`` is None for channel masks."""
        if self.mask == "channel":
            x_a, x_b = x.chunk(2, dim=1)
            if self.parity:
                x_a, x_b = x_b, x_a
            return x_a, x_b, None
        m = checkerboard_mask(x.shape[2], x.shape[3], self.parity, x)
        return torch.cat([x * m, m.expand(x.shape[0], 1, -1, -1)], dim=1), x, m

    def _merge(self, x_a: Tensor, z_b: Tensor, x: Tensor, m: Tensor | None) -> Tensor:
        if m is not None:
            return x * m + z_b * (1 - m)
        return torch.cat([z_b, x_a] if self.parity else [x_a, z_b], dim=1)

    def _conditioner(self, net_in: Tensor) -> Tensor:
        if not self.bf16_conditioner:
            return self.net(net_in)
        with torch.autocast(net_in.device.type, dtype=torch.bfloat16):
            h = self.net(net_in)
        return h.to(net_in.dtype)

    def _shift_and_log_scale(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.transform == "additive":
            return h, None
        shift, raw = h.chunk(2, dim=1)
        if self.scale == "sigmoid":
            return shift, F.logsigmoid(raw + 2.0)
        return shift, self.tanh_scale * torch.tanh(raw)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        net_in, x_b, m = self._split(x)
        shift, log_scale = self._shift_and_log_scale(self._conditioner(net_in))
        if log_scale is None:
            z_b, logdet = x_b + shift, x.new_zeros(x.shape[0])
        else:
            z_b = x_b * torch.exp(log_scale) + shift
            logdet = sum_except_batch(log_scale if m is None else log_scale * (1 - m))
        return self._merge(net_in, z_b, x, m), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        net_in, z_b, m = self._split(z)
        shift, log_scale = self._shift_and_log_scale(self._conditioner(net_in))
        x_b = z_b - shift
        if log_scale is not None:
            x_b = x_b * torch.exp(-log_scale)
        return self._merge(net_in, x_b, z, m)
