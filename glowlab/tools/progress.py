"""Rich progress bars for the tools' loops over batches, styled like Lightning's
``RichProgressBar``: shown on stderr when it is a terminal and ``enabled`` (the apps'
``progress`` option; notebook functions take ``progress=False`` by default). When stderr is not
a terminal (a log file, a batch job), a long loop prints a plain progress line every
``every_s`` seconds instead."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_enabled(enabled: bool, console: Console | None = None) -> bool:
    """Whether to draw: ``enabled`` and the console (default: stderr) is a terminal."""
    if not isinstance(enabled, bool):
        raise ValueError(f"progress={enabled!r} must be true or false")
    return enabled and (console or Console(stderr=True)).is_terminal


def track(
    items: Iterable[T],
    description: str,
    enabled: bool = False,
    total: int | None = None,
    console: Console | None = None,
    every_s: float = 30.0,
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar ``description  ━━━━  3/10 0:00:01 • 0:00:02``.

    ``total`` defaults to ``len(items)`` where it has one (a DataLoader counts batches).
    Nothing is drawn unless ``enabled``; off a terminal (`progress_enabled` false) the loop
    prints ``description: 3/10 (30%) | 0:01:00 elapsed, ~0:02:20 left`` at most every
    ``every_s`` seconds, and a last line when it printed any.
    """
    console = console or Console(stderr=True)
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not progress_enabled(enabled, console):
        yield from (_lines(items, description, total, console, every_s) if enabled else items)
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("•"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _lines(
    items: Iterable[T], description: str, total: int | None, console: Console, every_s: float
) -> Iterator[T]:
    """``items``, printing a progress line on ``console`` at most every ``every_s`` seconds."""
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            _print(console, _line(description, done, total, now - started))
    if last > started:
        _print(console, _line(description, done, total, time.monotonic() - started))


def _print(console: Console, line: str) -> None:
    console.print(line, highlight=False, markup=False, soft_wrap=True)


def _line(description: str, done: int, total: int | None, elapsed: float) -> str:
    """``sampling: 30/100 (30%) | 0:01:00 elapsed, ~0:02:20 left`` (no total: count only)."""
    spent = datetime.timedelta(seconds=round(elapsed))
    if not total:
        return f"{description}: {done} | {spent} elapsed"
    left = datetime.timedelta(seconds=round(elapsed * (total - done) / done))
    percent = 100 * done // total
    return f"{description}: {done}/{total} ({percent}%) | {spent} elapsed, ~{left} left"
