"""Jet's patchify bijection: ``(B, C, H, W) -> (B, C·p·p, H/p, W/p)``, logdet 0 (the patch
layout of ``glowlab.nets.transformer.patchify``).

References: Kolesnikov, Susano Pinto & Tschannen, "Jet: A modern Transformer-based normalizing
flow", 2024.
"""

from __future__ import annotations

from torch import Tensor

from glowlab.bijections.base import Bijection
from glowlab.nets.transformer import check_patch_size, patchify, unpatchify


class Patchify(Bijection):
    """``(B, C, H, W) -> (B, C·p·p, H/p, W/p)``: each ``p×p`` patch becomes one position with
    ``C·p·p`` channels (Jet's patch tokens, laid out as an image). logdet = 0.

    Channel ``c·p² + i·p + j`` holds pixel ``(p·h + i, p·w + j)`` of input channel ``c``.
    """

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        check_patch_size(patch_size, patch_size, patch_size)
        self.patch_size = patch_size

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        p = self.patch_size
        check_patch_size(p, h, w)
        tokens = patchify(x, p)  # (B, T, C·p·p)
        z = tokens.transpose(1, 2).reshape(b, c * p * p, h // p, w // p)
        return z, x.new_zeros(b)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        b, d, h, w = z.shape
        p = self.patch_size
        tokens = z.reshape(b, d, h * w).transpose(1, 2)  # (B, T, C·p·p)
        return unpatchify(tokens, p, (d // (p * p), h * p, w * p))


__all__ = ["Patchify"]
