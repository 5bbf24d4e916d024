"""Rich progress bars for the tools' loops over batches, styled like Lightning's
``RichProgressBar``: shown on stderr only when it is a terminal and ``enabled`` (the apps'
``progress`` option; notebook functions take ``progress=False`` by default)."""

from __future__ import annotations

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
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar ``description  ━━━━  3/10 0:00:01 • 0:00:02``.

    ``total`` defaults to ``len(items)`` where it has one (a DataLoader counts batches).
    Nothing is drawn unless ``progress_enabled(enabled, console)``.
    """
    if not progress_enabled(enabled, console):
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("•"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console or Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
