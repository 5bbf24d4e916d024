"""Shared fixtures: real Fashion-MNIST images when the Debian package is installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fmnist_images() -> torch.Tensor:
    """The first 256 real Fashion-MNIST test images, uint8 ``(256, 1, 28, 28)``."""
    path = FASHION_MNIST / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        raw = f.read(16 + 256 * 28 * 28)
    pixels = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8)
    return pixels.view(256, 1, 28, 28).clone()


def perturb_parameters(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move every parameter away from its (often identity) initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
