"""``glowlab-report DIR``: one table of bits per dim for every run of a sweep.

Reads every ``metrics.json`` under ``DIR`` (a Hydra multirun dir, or any folder of runs),
prints a markdown table sorted by bpd, and writes ``report.md`` and ``report.csv`` in ``DIR``.
The jobs of a sweep (``multirun.yaml``) that did not finish are listed after it, with their
status (``failed`` with its error line from ``failed.json``, ``unfinished``, ``not run``); in
``report.csv`` they are rows with a ``status`` and an ``error`` column.

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

from glowlab.outputs import write_text
from glowlab.sweeps import FAILED, job_statuses

COLUMNS = ("run", "overrides", "val/bpd", "test/bpd", "steps", "wall_time_s", "parameters")
STATUS_COLUMNS = ("run", "overrides", "status", "error")
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


def unfinished(root: Path) -> list[dict[str, Any]]:
    """One row per job below ``root`` that did not finish: the jobs of every sweep
    (``multirun.yaml``) without ``metrics.json``, and any other dir with a ``failed.json``."""
    rows, seen = [], set()
    for config in sorted(root.rglob("multirun.yaml")):
        sweep = config.parent
        for row in job_statuses(sweep):
            path = sweep / row["run"]
            seen.add(path.resolve())
            rows.append({**row, "run": str(path.relative_to(root))})
    for path in sorted(root.rglob(FAILED)):
        if path.parent.resolve() not in seen and not (path.parent / "metrics.json").is_file():
            record = json.loads(path.read_text())
            rows.append(
                {
                    "run": str(path.parent.relative_to(root)) or ".",
                    "overrides": " ".join(record.get("overrides", [])),
                    "status": "failed",
                    "error": record.get("error", ""),
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


def _table(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    cells = [[_cell(row.get(c)).replace("|", "\\|") for c in names] for row in rows]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


def markdown(rows: list[dict[str, Any]], others: list[dict[str, Any]] = ()) -> str:
    """The table of finished runs, then (if any) the table of jobs that did not finish."""
    lines = _table(rows, columns(rows)) if rows else ["No run finished."]
    if others:
        lines += ["", f"{len(others)} job(s) did not finish:", "", *_table(others, STATUS_COLUMNS)]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]], others: list[dict[str, Any]] = ()) -> str:
    """Finished runs, then unfinished jobs (``status``/``error`` columns only when any)."""
    names = columns(rows) + (("status", "error") if others else ())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    writer.writerows([{**row, "status": "finished"} for row in rows] if others else rows)
    writer.writerows(others)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="glowlab-report", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a multirun dir (or any folder of runs)")
    parser.add_argument("--sort-by", default="test/bpd", choices=list(SORT_KEYS))
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        sys.exit(f"glowlab-report: error: {args.directory} is not a directory")
    rows = sort_rows(collect(args.directory), args.sort_by)
    others = unfinished(args.directory)
    if not rows and not others:
        sys.exit(
            f"glowlab-report: error: no metrics.json under {args.directory}; "
            "point it at a glowlab-train run or multirun directory"
        )
    table = markdown(rows, others)
    write_text(args.directory / "report.md", table, what="report")
    write_text(args.directory / "report.csv", to_csv(rows, others), what="report")
    print(table, end="")
    print(f"\nwrote {args.directory / 'report.md'} and {args.directory / 'report.csv'}")


if __name__ == "__main__":
    main()
