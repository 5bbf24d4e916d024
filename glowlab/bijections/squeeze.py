"""Space-to-depth reshaping (RealNVP/Glow squeeze)."""

from __future__ import annotations

from torch import Tensor

from glowlab.bijections.base import Bijection


class Squeeze(Bijection):
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``: each 2×2 patch becomes 4 channels. logdet = 0.

    Channel ``4c + 2i + j`` of the output holds pixel ``(2h + i, 2w + j)`` of input channel ``c``.

    References: Dinh et al., "Density estimation using Real NVP", 2017.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(
                f"Squeeze needs an even height and width, got {h}×{w}; "
                "crop or pad the images, or use fewer levels"
            )
        x = x.reshape(b, c, h // 2, 2, w // 2, 2)
        x = x.permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
        return x.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        b, c, h, w = z.shape
        z = z.reshape(b, c // 4, 2, 2, h, w)
        z = z.permute(0, 1, 4, 2, 5, 3)  # (B, C/4, H, 2, W, 2)
        return z.reshape(b, c // 4, 2 * h, 2 * w)
