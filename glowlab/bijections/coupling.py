"""Coupling layers (NICE, RealNVP, Glow) with channel or checkerboard masks.

A coupling splits ``x`` into a part ``x_a`` that passes unchanged and a part ``x_b`` that is
transformed elementwise with parameters computed from ``x_a`` by a conditioner network:
``z_b = x_b · s(x_a) + t(x_a)`` (affine), ``z_b = x_b + t(x_a)`` (additive), a monotonic
rational-quadratic spline with linear tails (spline, Durkan et al. 2019) or Flow++'s
logistic-mixture CDF (mixture, Ho et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.bijections.logistic_mixture import logistic_mixture_transform
from glowlab.bijections.splines import rational_quadratic_spline
from glowlab.validation import choose

Conditioner = Callable[[int, int], nn.Module]
"""Factory ``(in_channels, out_channels) -> net``, net: ``(B, in, H, W) -> (B, out, H, W)``."""

MASKS = ("channel", "checkerboard")
TRANSFORMS = ("affine", "additive", "spline", "mixture")
SCALES = ("sigmoid", "exp_tanh")


def checkerboard_mask(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """``(1, 1, H, W)`` mask, 1 where ``(i + j + parity)`` is even (the pixels kept as is)."""
    rows = torch.arange(height, device=like.device).view(-1, 1)
    cols = torch.arange(width, device=like.device).view(1, -1)
    return ((rows + cols + parity) % 2 == 0).to(like.dtype).view(1, 1, height, width)


class Coupling(Bijection):
    """Affine, additive, spline or logistic-mixture coupling with a channel or checkerboard mask.

    - ``mask="channel"``: ``x_a`` is one half of the channels (``parity`` picks which);
      the conditioner maps ``C_a -> n·C_b`` channels.
    - ``mask="checkerboard"``: ``x_a`` is the pixels where ``(i + j + parity)`` is even; the
      conditioner sees ``x·m`` and ``m`` (``C + 1`` channels) and emits ``n·C`` channels, of
      which only the masked-out pixels are used.

    Affine scale: ``"sigmoid"`` uses ``s = sigmoid(h + 2)`` (Glow); ``"exp_tanh"`` uses
    ``s = exp(a · tanh(h))`` with a learned per-channel ``a`` (RealNVP). logdet = ``Σ_b log s``.

    Spline: ``spline_bins`` bins on ``[-tail_bound, tail_bound]``, identity outside; the
    conditioner emits ``3·bins - 1`` values per transformed element.

    Mixture: ``z = σ⁻¹(Σ_k π_k σ((x − μ_k) / s_k)) · exp(a) + b`` with ``mixture_components``
    components (``glowlab.bijections.logistic_mixture``); the conditioner emits
    ``3·components + 2`` values per transformed element. Its inverse is a bisection, so
    ``exact_inverse`` is False and no gradient flows through ``inverse``.

    ``bf16_conditioner=True`` runs only the conditioner network under bfloat16 autocast; its
    output is cast back, so scales, shifts and the logdet are computed in the input's dtype.
    Forward and inverse evaluate the conditioner on the same ``x_a``, so the layer stays
    exactly invertible.

    References: Dinh et al., NICE (2015) and Real NVP (2017); Kingma & Dhariwal, Glow (2018);
    Durkan et al., Neural spline flows (2019); Ho et al., Flow++ (2019).
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
        spline_bins: int = 8,
        tail_bound: float = 3.0,
        mixture_components: int = 4,
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
        if transform == "spline" and spline_bins < 2:
            raise ValueError(f"spline_bins={spline_bins!r} must be >= 2")
        if transform == "mixture" and mixture_components < 1:
            raise ValueError(f"mixture_components={mixture_components!r} must be >= 1")
        self.tail_bound = tail_bound
        self.exact_inverse = transform != "mixture"
        n_params = {
            "affine": 2,
            "additive": 1,
            "spline": 3 * spline_bins - 1,
            "mixture": 3 * mixture_components + 2,
        }[transform]
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

    def _elementwise(self, x_b: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        """Transform ``x_b`` with conditioner output ``h``; return it and the forward map's
        elementwise ``log|dz/dx|`` (None for additive couplings)."""
        if self.transform == "additive":
            return (x_b - h if inverse else x_b + h), None
        if self.transform in ("spline", "mixture"):
            b, c, height, width = x_b.shape
            params = h.reshape(b, c, -1, height, width).permute(0, 1, 3, 4, 2)  # (B,C,H,W,P)
            if self.transform == "mixture":
                return logistic_mixture_transform(x_b, params, inverse)
            return rational_quadratic_spline(x_b, params, self.tail_bound, inverse)
        shift, raw = h.chunk(2, dim=1)
        if self.scale == "sigmoid":
            log_scale = F.logsigmoid(raw + 2.0)
        else:
            log_scale = self.tanh_scale * torch.tanh(raw)
        if inverse:
            return (x_b - shift) * torch.exp(-log_scale), log_scale
        return x_b * torch.exp(log_scale) + shift, log_scale

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        net_in, x_b, m = self._split(x)
        z_b, log_derivative = self._elementwise(x_b, self._conditioner(net_in), inverse=False)
        if log_derivative is None:
            logdet = x.new_zeros(x.shape[0])
        else:
            logdet = sum_except_batch(log_derivative if m is None else log_derivative * (1 - m))
        return self._merge(net_in, z_b, x, m), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        net_in, z_b, m = self._split(z)
        x_b, _ = self._elementwise(z_b, self._conditioner(net_in), inverse=True)
        return self._merge(net_in, x_b, z, m)
