"""Masked convolutions for autoregressive layers (MADE degrees for convolutions, PixelCNN masks).

An element ``(c, r, s)`` of a ``(B, C, H, W)`` tensor comes after every element of the pixels
above it and left of it on its row (raster order), and after channels ``< c`` of its own pixel.
A masked network's output for element ``i`` sees only the elements before ``i``; the layer
using it (``glowlab.bijections.autoregressive.MaskedAutoregressive``) gets a triangular
Jacobian from that.

References: Germain et al., "MADE", 2015; van den Oord et al., "Conditional image generation
with PixelCNN decoders", 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def autoregressive_conv_mask(
    in_degrees: Tensor, out_degrees: Tensor, kernel_size: int, strict: bool
) -> Tensor:
    """``(out, in, k, k)`` mask of a causal convolution (MADE degrees for convolutions).

    Kernel taps on rows above the centre, or left of it on the centre row, are open (earlier
    pixels). The centre tap connects input unit ``j`` to output unit ``i`` when
    ``deg_in[j] < deg_out[i]`` (``strict``, PixelCNN mask "A") or ``<=`` (mask "B").
    """
    centre = kernel_size // 2
    mask = torch.zeros(len(out_degrees), len(in_degrees), kernel_size, kernel_size)
    mask[:, :, :centre, :] = 1
    mask[:, :, centre, :centre] = 1
    earlier = in_degrees[None, :] < out_degrees[:, None]
    same_or_earlier = in_degrees[None, :] <= out_degrees[:, None]
    mask[:, :, centre, centre] = (earlier if strict else same_or_earlier).float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """``k×k`` convolution, padding ``k // 2``, whose weight is multiplied by a fixed
    :func:`autoregressive_conv_mask` (a non-persistent buffer, rebuilt from the degrees)."""

    def __init__(
        self, in_degrees: Tensor, out_degrees: Tensor, kernel_size: int, strict: bool
    ) -> None:
        super().__init__(len(in_degrees), len(out_degrees), kernel_size, padding=kernel_size // 2)
        mask = autoregressive_conv_mask(in_degrees, out_degrees, kernel_size, strict)
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """``(B, in, H, W) -> (B, out, H, W)``; ``weight`` reuses a precomputed masked weight."""
        weight = self.masked_weight() if weight is None else weight
        return F.conv2d(x, weight, self.bias, padding=self.padding)


class MaskedConvConditioner(nn.Module):
    """``(B, C, H, W) -> (B, P·C, H, W)``: the raw transform parameters of every element, each
    depending only on the elements before it in raster-then-channel order.

    masked conv ``k×k`` (C → hidden, mask A) → ReLU → ``hidden_layers`` × [masked conv ``k×k``
    (hidden → hidden, mask B) → ReLU] → masked conv 1×1 (hidden → P·C, mask B,
    zero-initialised). Input channel ``c`` has degree ``c``; hidden channels are split into
    ``C`` contiguous groups of degrees ``0..C-1``; each output has the degree of the channel
    it parametrises (``out_degrees``, default: output ``j`` belongs to channel ``j mod C``).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        kernel_size: int = 3,
        hidden_layers: int = 1,
        out_degrees: Tensor | None = None,
    ) -> None:
        super().__init__()
        input_degrees = torch.arange(channels)
        hidden_degrees = torch.arange(hidden) * channels // hidden
        output_degrees = (
            torch.arange(2 * channels) % channels if out_degrees is None else out_degrees
        )
        self.layers = nn.ModuleList(
            [MaskedConv2d(input_degrees, hidden_degrees, kernel_size, strict=True)]
            + [
                MaskedConv2d(hidden_degrees, hidden_degrees, kernel_size, strict=False)
                for _ in range(hidden_layers)
            ]
        )
        self.output = MaskedConv2d(hidden_degrees, output_degrees, 1, strict=False)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.receptive_radius = (kernel_size // 2) * (1 + hidden_layers)

    def masked_weights(self) -> list[Tensor]:
        """The hidden layers' masked weights, to reuse across many passes."""
        return [layer.masked_weight() for layer in self.layers]

    def features(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """``(B, C, H, W) -> (B, hidden, H, W)``: the last hidden layer's activations."""
        for layer, weight in zip(self.layers, weights, strict=True):
            x = F.relu(layer(x, weight))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.features(x, self.masked_weights()))


__all__ = ["MaskedConv2d", "MaskedConvConditioner", "autoregressive_conv_mask"]
