"""Hutchinson probes: random ``v`` with ``E[v vᵀ] = I``, so ``vᵀ A v`` estimates ``tr(A)``
without bias (Hutchinson, 1989). Shared by the CNF trace and the residual-flow power series.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glowlab.validation import choose

NOISES = ("rademacher", "gaussian")


def hutchinson_noise(like: Tensor, kind: str = "rademacher") -> Tensor:
    """A probe ``v`` shaped like ``like`` with ``E[vvᵀ] = I``: ``±1`` entries or ``N(0, 1)``."""
    if choose("noise", kind, NOISES) == "gaussian":
        return torch.randn_like(like)
    return torch.randint_like(like, 0, 2) * 2 - 1
