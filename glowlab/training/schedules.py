"""Learning-rate schedules, built as ``_partial_`` Hydra nodes and completed with
``(optimizer, total_steps)`` by the LightningModule."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from glowlab.validation import check_int, check_range


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 200, final_fraction: float = 0.0
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``final_fraction · lr``."""
    check_int("warmup_steps", warmup_steps, low=0)
    check_range("final_fraction", final_fraction, float, 0, 1)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        progress = min(1.0, step / max(1, total_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return warm * (final_fraction + (1 - final_fraction) * cosine)

    return LambdaLR(optimizer, factor)


def warmup_constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 200) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant (Glow's schedule)."""
    check_int("warmup_steps", warmup_steps, low=0)
    return LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )
