"""Planar flow on vectors (Rezende & Mohamed, 2015), invertible by construction.

``z = x + û · tanh(wᵀx + b)`` on ``(B, D)``, with ``û = u + (m(wᵀu) − wᵀu) · w / ‖w‖²`` and
``m(a) = −1 + softplus(a)``, so that ``wᵀû > −1`` and the map is a bijection.
logdet = ``log(1 + wᵀû · tanh'(wᵀx + b))``. The inverse solves the scalar monotone equation
``wᵀz + b = a + wᵀû · tanh(a)`` for ``a = wᵀx + b`` by bisection (``|a − (wᵀz + b)| ≤ |wᵀû|``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowlab.bijections.base import Bijection


class Planar(Bijection):
    """Planar flow on ``(B, D)`` vectors (e.g. 2-D toy densities or a flattened top latent)."""

    def __init__(self, dim: int, bisection_steps: int = 100) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.zeros(dim))
        self.w = nn.Parameter(torch.randn(dim) / dim**0.5)
        self.b = nn.Parameter(torch.zeros(()))
        self.bisection_steps = bisection_steps

    def _u_hat(self) -> Tensor:
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat = self._u_hat()
        a = x @ self.w + self.b  # (B,)
        z = x + u_hat * torch.tanh(a)[:, None]
        logdet = torch.log1p((self.w @ u_hat) * (1 - torch.tanh(a) ** 2))
        return z, logdet

    @torch.no_grad()
    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        u_hat = self._u_hat()
        wu = self.w @ u_hat
        target = z @ self.w + self.b  # = a + wu · tanh(a), increasing in a
        low, high = target - wu.abs(), target + wu.abs()
        for _ in range(self.bisection_steps):
            mid = (low + high) / 2
            above = mid + wu * torch.tanh(mid) > target
            high, low = torch.where(above, mid, high), torch.where(above, low, mid)
        a = (low + high) / 2
        return z - u_hat * torch.tanh(a)[:, None]
