"""Learning-rate schedules, built as ``_partial_`` Hydra nodes and completed with
``(optimizer, total_steps)`` by the LightningModule."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from glowlab.validation import check_int, check_range


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 200, final_fraction: float = 0.0
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``final_fraction · lr``."""
    return _warmup_then_decay(
        optimizer,
        total_steps,
        warmup_steps,
        final_fraction,
        lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
    )


def warmup_linear(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 200, final_fraction: float = 0.0
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then linear decay to ``final_fraction · lr`` at
    ``total_steps`` ("straight to zero": Bergsma et al., 2025, find it beats cosine decay)."""
    return _warmup_then_decay(
        optimizer, total_steps, warmup_steps, final_fraction, lambda progress: 1 - progress
    )


def warmup_constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 200) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant (Glow's schedule)."""
    check_int("warmup_steps", warmup_steps, low=0)
    return LambdaLR(optimizer, lambda step: _warm(step, warmup_steps))


def _warm(step: int, warmup_steps: int) -> float:
    """The warm-up factor: ``(step + 1) / warmup_steps``, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def _warmup_then_decay(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int,
    final_fraction: float,
    decay: Callable[[float], float],
) -> LambdaLR:
    """``warm(step) · (f + (1 − f) · decay(step / total_steps))``, ``f = final_fraction`` and
    ``decay`` falling from 1 at progress 0 to 0 at progress 1."""
    check_int("warmup_steps", warmup_steps, low=0)
    check_range("final_fraction", final_fraction, float, 0, 1)

    def factor(step: int) -> float:
        progress = min(1.0, step / max(1, total_steps))
        return _warm(step, warmup_steps) * (
            final_fraction + (1 - final_fraction) * decay(progress)
        )

    return LambdaLR(optimizer, factor)


def follow_the_clock(schedule: LambdaLR, total_steps: int, elapsed: Callable[[], float]) -> None:
    """Make ``schedule`` (built for ``total_steps``) run at the position
    ``max(step, total_steps · elapsed())``, ``elapsed()`` the fraction of the time budget spent:
    a run that the budget stops before ``total_steps`` still ends its schedule (a cosine
    anneals to its end) when the budget ends. Not bit-reproducible: the position depends on
    the machine's speed."""

    def clocked(factor: Callable[[int], float]) -> Callable[[int], float]:
        return lambda step: factor(max(step, math.ceil(total_steps * min(1.0, elapsed()))))

    schedule.lr_lambdas = [clocked(factor) for factor in schedule.lr_lambdas]
