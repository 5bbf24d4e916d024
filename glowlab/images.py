"""Image grids: a batch of integer images as one picture, for files and TensorBoard."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid


def image_grid(images: torch.Tensor, n_bits: int, nrow: int | None = None) -> torch.Tensor:
    """Integer images ``(N, C, H, W)`` in ``[0, 2^n_bits)`` -> a float grid ``(C', H', W')``
    in ``[0, 1]`` for saving or TensorBoard, ``nrow`` images a row (default ``⌊√N⌋``), white
    2-pixel gaps."""
    floats = images.float() / (2**n_bits - 1)
    return make_grid(floats, nrow=nrow or max(1, int(len(images) ** 0.5)), padding=2, pad_value=1)
