"""``glowlab-report DIR``: one table of bits per dim for every run of a sweep.

Reads every ``metrics.json`` under ``DIR`` (a Hydra multirun dir, or any folder of runs),
prints a markdown table sorted by bpd, and writes ``report.md`` and ``report.csv`` in ``DIR``.

Runs of noise-augmented models (``model/dequantization=gaussian``) report ``noisy_bpd``, the
density of noisy images and not a bpd of the data: it gets its own columns
(``val/noisy_bpd``, ``test/noisy_bpd``, present only when some run has them), so it is never
sorted or read together with the discrete bpd of other runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("run", "overrides", "val/bpd", "test/bpd", "steps", "wall_time_s", "parameters")
NOISY_COLUMNS = ("val/noisy_bpd", "test/noisy_bpd")
SORT_KEYS = ("test/bpd", "val/bpd", *reversed(NOISY_COLUMNS))


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per ``metrics.json`` below ``root``: the columns of :data:`COLUMNS` and
    :data:`NOISY_COLUMNS`."""
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        rows.append(
            {
                "run": str(path.parent.relative_to(root)) or ".",
                "overrides": " ".join(metrics.get("overrides", [])),
                **{key: metrics.get(key) for key in (*COLUMNS[2:], *NOISY_COLUMNS)},
            }
        )
    return rows


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Sort by ``key`` ascending; runs without that metric go last."""
    return sorted(rows, key=lambda row: math.inf if row.get(key) is None else row[key])


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """:data:`COLUMNS`, with the noisy-density columns after the bpd ones if any run has them."""
    if not any(row.get(c) is not None for row in rows for c in NOISY_COLUMNS):
        return COLUMNS
    return (*COLUMNS[:4], *NOISY_COLUMNS, *COLUMNS[4:])


def markdown(rows: list[dict[str, Any]]) -> str:
    names = columns(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="glowlab-report", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a multirun dir (or any folder of runs)")
    parser.add_argument("--sort-by", default="test/bpd", choices=list(SORT_KEYS))
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        sys.exit(f"glowlab-report: error: {args.directory} is not a directory")
    rows = sort_rows(collect(args.directory), args.sort_by)
    if not rows:
        sys.exit(
            f"glowlab-report: error: no metrics.json under {args.directory}; "
            "point it at a glowlab-train run or multirun directory"
        )
    table = markdown(rows)
    (args.directory / "report.md").write_text(table)
    (args.directory / "report.csv").write_text(to_csv(rows))
    print(table, end="")
    print(f"\nwrote {args.directory / 'report.md'} and {args.directory / 'report.csv'}")


if __name__ == "__main__":
    main()
