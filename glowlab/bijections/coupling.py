"""Coupling layers (NICE, RealNVP, Glow, NSF, Flow++, Jet) with channel or spatial masks.

A coupling splits ``x`` into a part ``x_a`` that passes unchanged and a part ``x_b`` that is
transformed elementwise, ``z_b = τ(x_b; θ(x_a))``, with parameters computed from ``x_a`` by a
conditioner network and ``τ`` any ``glowlab.transforms.ElementwiseTransform`` (affine,
additive, spline, mixture, or one of your own).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from glowlab.bijections.base import Bijection, sum_except_batch
from glowlab.transforms import ElementwiseTransform, TransformFactory, transform_factory
from glowlab.validation import choose

Conditioner = Callable[[int, int], nn.Module]
"""Factory ``(in_channels, out_channels) -> net``, net: ``(B, in, H, W) -> (B, out, H, W)``."""

MASKS = ("channel", "checkerboard", "stripe")


def checkerboard_mask(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """``(1, 1, H, W)`` mask, 1 where ``(i + j + parity)`` is even (the pixels kept as is)."""
    rows = torch.arange(height, device=like.device).view(-1, 1)
    cols = torch.arange(width, device=like.device).view(1, -1)
    return ((rows + cols + parity) % 2 == 0).to(like.dtype).view(1, 1, height, width)


def stripe_mask(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """``(1, 1, H, W)`` mask, 1 on the columns ``j`` with ``(j + parity)`` even."""
    cols = torch.arange(width, device=like.device).view(1, -1).expand(height, width)
    return ((cols + parity) % 2 == 0).to(like.dtype).view(1, 1, height, width)


SPATIAL_MASKS = {"checkerboard": checkerboard_mask, "stripe": stripe_mask}


class Coupling(Bijection):
    """A coupling with a channel or spatial mask and any elementwise transform.

    - ``mask="channel"``: ``x_a`` is one half of the channels (``parity`` picks which);
      the conditioner maps ``C_a -> P·C_b`` channels.
    - ``mask="checkerboard"`` / ``"stripe"``: ``x_a`` is the pixels where ``(i + j + parity)``
      (checkerboard) or ``(j + parity)`` (stripe: alternate columns) is even; the conditioner
      sees ``x·m`` and ``m`` (``C + 1`` channels) and emits ``P·C`` channels, of which only
      the masked-out pixels are used.

    ``P = transform.n_params``; the conditioner's output is read per element with
    ``transform.split_params``. logdet = ``Σ_b log|∂τ/∂x_b|``. ``transform`` is a factory
    called with ``channels`` = the number of transformed channels, or a built-in name
    (``"affine"``, ``"additive"``, ``"spline"``, ``"mixture"``). The layer's inverse is exact
    when the transform's is (the mixture's is a bisection).

    ``bf16_conditioner=True`` runs only the conditioner network under bfloat16 autocast; its
    output is cast back, so the transform and the logdet are computed in the input's dtype.
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
        transform: str | TransformFactory = "affine",
        parity: int = 0,
        bf16_conditioner: bool = False,
    ) -> None:
        super().__init__()
        self.mask = choose("mask", mask, MASKS)
        self.parity = parity % 2
        self.bf16_conditioner = bf16_conditioner
        if mask == "channel" and channels % 2:
            raise ValueError(
                f"a channel-mask coupling needs an even number of channels, got {channels}; "
                "use mask='checkerboard' or squeeze first"
            )
        transformed = channels // 2 if mask == "channel" else channels
        # the transform is registered first: its own parameters (exp_tanh's a) then come
        # first, as they did when they lived on the coupling (optimizer state order)
        self.transform: ElementwiseTransform = transform_factory(transform)(channels=transformed)
        self.exact_inverse = self.transform.exact_inverse
        in_channels = channels // 2 if mask == "channel" else channels + 1
        self.net = conditioner(in_channels, self.transform.n_params * transformed)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return ``(conditioner input, x_b, mask)``; ``mask`` is None for channel masks."""
        if self.mask == "channel":
            x_a, x_b = x.chunk(2, dim=1)
            if self.parity:
                x_a, x_b = x_b, x_a
            return x_a, x_b, None
        m = SPATIAL_MASKS[self.mask](x.shape[2], x.shape[3], self.parity, x)
        return torch.cat([x * m, m.expand(x.shape[0], 1, -1, -1)], dim=1), x, m

    def _merge(self, x_a: Tensor, z_b: Tensor, x: Tensor, m: Tensor | None) -> Tensor:
        if m is not None:
            return x * m + z_b * (1 - m)
        return torch.cat([z_b, x_a] if self.parity else [x_a, z_b], dim=1)

    def _params(self, net_in: Tensor) -> Tensor:
        """``(B, C_b, H, W, P)``: the transform's parameters for every element of ``x_b``."""
        if not self.bf16_conditioner:
            return self.transform.split_params(self.net(net_in))
        with torch.autocast(net_in.device.type, dtype=torch.bfloat16):
            h = self.net(net_in)
        return self.transform.split_params(h.to(net_in.dtype))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        net_in, x_b, m = self._split(x)
        z_b, log_derivative = self.transform(x_b, self._params(net_in))
        if log_derivative is None:
            logdet = x.new_zeros(x.shape[0])
        else:
            logdet = sum_except_batch(log_derivative if m is None else log_derivative * (1 - m))
        return self._merge(net_in, z_b, x, m), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        net_in, z_b, m = self._split(z)
        x_b = self.transform.inverse(z_b, self._params(net_in))
        return self._merge(net_in, x_b, z, m)
