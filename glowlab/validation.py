"""Small helpers that turn bad options into errors naming the option and the fix."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def choose(option: str, value: T, allowed: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError`` naming both."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{option}={value!r} is not supported; choose one of {allowed}")
    return value


def check_positive(option: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a number ``> 0`` (or ``>= 0`` with
    ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{option}={value!r} must be a number {bound}; pass {option}=<number>")
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{option}={value!r} must be {bound}")


def check_n_bits(n_bits: int) -> None:
    """Raise ``ValueError`` unless ``n_bits`` is an integer in 1..8."""
    if not isinstance(n_bits, int) or isinstance(n_bits, bool) or not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits={n_bits!r} must be an integer in 1..8 (8 for ordinary images)")
