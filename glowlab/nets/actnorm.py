"""ActNorm's per-channel affine normalisation with data-dependent initialisation, as a network
layer. ``glowlab.bijections.ActNorm`` is the same map as a bijection (with its logdet)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class HiddenActNorm(nn.Module):
    """``y = (x + bias) · exp(log_scale)`` per channel; ``(B, C, H, W) -> (B, C, H, W)``.

    The first forward pass in training mode sets ``bias`` and ``log_scale`` so that the batch
    has zero mean and unit variance per channel. Under ``torch.distributed`` the statistics
    are averaged over all ranks, so every rank ends with identical values. The
    ``initialized`` buffer is saved with the weights: a loaded model is never re-initialised.

    References: Kingma & Dhariwal, "Glow", 2018.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from the statistics of ``x`` (all ranks averaged)."""
        moments = torch.stack([x.mean(dim=(0, 2, 3)), (x * x).mean(dim=(0, 2, 3))])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
        mean, sq_mean = moments
        std = (sq_mean - mean * mean).clamp_min(0).sqrt()
        self.bias.copy_(-mean.view_as(self.bias))
        self.log_scale.copy_(-torch.log(std + self.eps).view_as(self.log_scale))
        self.initialized.fill_(True)

    def normalize(self, x: Tensor) -> Tensor:
        """Apply the map (initialising first if training and not yet initialised)."""
        if self.training and not self.initialized:
            self.initialize(x)
        return (x + self.bias) * torch.exp(self.log_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(x)
