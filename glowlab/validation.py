"""Small helpers that turn bad options into errors naming the option and the fix.

A ``Range`` states what one number may be (type, finiteness, bounds, whether null is allowed)
once; ``Range.check`` raises the one-line ``ValueError`` that both the config check
(``glowlab.options``) and the Python constructors use.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def choose(option: str, value: T, allowed: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError`` naming both."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{option}={value!r} is not supported; choose one of {allowed}")
    return value


def shown(value: Any) -> str:
    """``value`` as it is written on the command line (``true``, ``null``, ``nan``, ``[1,2]``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Sequence):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)


def is_integer(value: Any) -> bool:
    """True for Python/NumPy integers, never for booleans."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for real numbers (integers included), never for booleans."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Spec:
    """What a value of one option may be: ``describe()`` in words, ``accepts(value)``."""

    example: Any = None

    def describe(self) -> str:
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def check(self, option: str, value: Any) -> None:
        """Raise ``ValueError`` ``"{option}={value} must be {describe()}[; e.g. ...]"``."""
        if self.accepts(value):
            return
        hint = "" if self.example is None else f"; e.g. {option}={shown(self.example)}"
        raise ValueError(f"{option}={shown(value)} must be {self.describe()}{hint}")


@dataclass(frozen=True)
class Range(Spec):
    """An integer (``kind=int``) or a finite real number (``kind=float``) between ``low`` and
    ``high`` (each inclusive unless ``*_open``); ``None`` too when ``optional``. ``note`` is
    added to the description, ``example`` shown as the fix."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    note: str = ""
    example: Any = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind is int:
            if not is_integer(value):
                return False
        elif not is_number(value) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a finite number"
        low = None if self.low is None else f"{_num(self.low)}"
        high = None if self.high is None else f"{_num(self.high)}"
        if low is not None and low == high:
            text = low + (" or null" if self.optional else "")
            return f"{text} ({self.note})" if self.note else text
        if low is not None and high is not None:
            if self.kind is int and not (self.low_open or self.high_open):
                bounds = f" in {low}..{high}"
            else:
                bounds = (
                    f" in {'(' if self.low_open else '['}{low}, {high}"
                    f"{')' if self.high_open else ']'}"
                )
        elif low is not None:
            bounds = f" {'>' if self.low_open else '>='} {low}"
        elif high is not None:
            bounds = f" {'<' if self.high_open else '<='} {high}"
        else:
            bounds = ""
        text = noun + bounds + (" or null" if self.optional else "")
        return f"{text} ({self.note})" if self.note else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class AnyOf(Spec):
    """Any of ``specs``, or one of the words ``words`` (``"all"``, ``"auto"``), or any text
    when ``text`` names what text stands for (e.g. ``"an image file"``), or true/false when
    ``flag``."""

    specs: tuple[Spec, ...] = ()
    words: tuple[str, ...] = ()
    text: str = ""
    flag: bool = False
    optional: bool = False
    example: Any = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional or any(s.accepts(None) for s in self.specs)
        if isinstance(value, bool):
            return self.flag
        if isinstance(value, str):
            return value in self.words or bool(self.text)
        return any(spec.accepts(value) for spec in self.specs)

    def describe(self) -> str:
        parts = ["true", "false"] if self.flag else []
        parts += [spec.describe() for spec in self.specs]
        parts += [repr(word) for word in self.words]
        parts += [self.text] if self.text else []
        parts += ["null"] if self.optional else []
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class ListOf(Spec):
    """A list of at least ``min_items`` values, each accepted by ``item`` (a single value
    too when ``single``: tools read ``indices=3`` as ``[3]``)."""

    item: Spec = Range()
    min_items: int = 1
    single: bool = False
    optional: bool = False
    example: Any = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, str) or not isinstance(value, Sequence):
            return self.single and self.item.accepts(value)
        return len(value) >= self.min_items and all(self.item.accepts(v) for v in value)

    def describe(self) -> str:
        size = {0: "a list", 1: "a non-empty list"}.get(
            self.min_items, f"a list of at least {self.min_items} values"
        )
        single = " (or one value)" if self.single else ""
        none = " or null" if self.optional else ""
        return f"{size}{single}, each {self.item.describe()}{none}"


def check_range(
    option: str,
    value: Any,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a ``kind`` (int, or a finite float) in the
    given bounds (or None when ``optional``); the message names ``option`` and the range."""
    Range(kind, low, high, low_open, high_open, optional).check(option, value)


def check_int(option: str, value: Any, low: int = 1, high: int | None = None, **kw) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer in ``low..high`` (a count of layers,
    blocks, channels: ``>= 1`` by default)."""
    check_range(option, value, int, low, high, **kw)


def check_positive(option: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number ``> 0`` (or ``>= 0`` with
    ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    if not is_number(value):
        raise ValueError(f"{option}={value!r} must be a number {bound}; pass {option}=<number>")
    if not value >= 0 if allow_zero else not value > 0:
        raise ValueError(f"{option}={value!r} must be {bound}")
    if not math.isfinite(value):
        raise ValueError(f"{option}={value!r} must be a finite number {bound}")


def check_n_bits(n_bits: int) -> None:
    """Raise ``ValueError`` unless ``n_bits`` is an integer in 1..8."""
    if not is_integer(n_bits) or not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits={n_bits!r} must be an integer in 1..8 (8 for ordinary images)")
