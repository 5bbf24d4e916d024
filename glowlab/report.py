"""``glowlab-report DIR``: one table of the metrics of every run of a sweep.

Reads every ``metrics.json`` under ``DIR`` (a Hydra multirun dir, or any folder of runs),
prints a markdown table sorted by test bpd (``--sort-by val/<key>``/``test/<key>`` for
another metric), and writes ``report.md`` and ``report.csv`` in ``DIR``. Each metric a run
reported (``module.metrics``, ``glowlab.metrics``) gets a ``val/<key>`` and a ``test/<key>``
column, and is sorted best first by the direction the run recorded from the metric's class
(``metric_directions``: lower or higher is better).
The jobs of a sweep (``multirun.yaml``) that did not finish are listed after it, with their
status (``failed`` with its error line from ``failed.json``, ``unfinished``, ``not run``); in
``report.csv`` they are rows with a ``status`` and an ``error`` column.

Runs of noise-augmented models (``model/dequantization=gaussian``) report ``noisy_bpd``, the
density of noisy images and not a bpd of the data: it gets its own columns
(``val/noisy_bpd``, ``test/noisy_bpd``, present only when some run has them), so it is never
sorted or read together with the discrete bpd of other runs. The ``bpd`` columns are always
there.
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

FACTS = ("steps", "wall_time_s", "parameters")
STATUS_COLUMNS = ("run", "overrides", "status", "error")
STAGES = ("val", "test")


def directions(metrics: dict[str, Any]) -> dict[str, bool]:
    """``{key: higher_is_better}`` of the metrics a run's ``metrics.json`` reports: its
    ``metric_directions``, or (a run written before they were recorded) its bpd keys."""
    recorded = metrics.get("metric_directions")
    if recorded is not None:
        return {key: direction == "higher" for key, direction in recorded.items()}
    names = (key.partition("/")[2] for key in metrics if key.partition("/")[0] in STAGES)
    return {name: False for name in names if name.endswith("bpd")}


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per ``metrics.json`` below ``root``: ``run``, ``overrides``, ``val/<key>`` and
    ``test/<key>`` of each of its metrics, the :data:`FACTS`, and its ``directions``."""
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        better = directions(metrics)
        rows.append(
            {
                "run": str(path.parent.relative_to(root)) or ".",
                "overrides": " ".join(metrics.get("overrides", [])),
                **{
                    f"{stage}/{key}": metrics.get(f"{stage}/{key}")
                    for key in better
                    for stage in STAGES
                },
                **{key: metrics.get(key) for key in FACTS},
                "directions": better,
            }
        )
    return rows


def metric_keys(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """``{key: higher_is_better}`` over all rows: ``bpd`` first, then in order of appearance."""
    keys = {"bpd": False}
    for row in rows:
        for key, higher in row["directions"].items():
            keys.setdefault(key, higher)
    return keys


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
    """Sort by ``key`` (``test/bpd``, ``val/<key>``, ...), best first by its direction; runs
    without that metric go last."""
    sign = -1 if metric_keys(rows).get(key.partition("/")[2]) else 1
    return sorted(rows, key=lambda row: math.inf if row.get(key) is None else sign * row[key])


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """``run``, ``overrides``, ``val/<key>`` and ``test/<key>`` of every metric
    (:func:`metric_keys`), then the :data:`FACTS`."""
    stages = tuple(f"{stage}/{key}" for key in metric_keys(rows) for stage in STAGES)
    return ("run", "overrides", *stages, *FACTS)


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
    parser.add_argument(
        "--sort-by", default="test/bpd", help="a metric column, e.g. test/bpd or val/<key>"
    )
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        sys.exit(f"glowlab-report: error: {args.directory} is not a directory")
    rows = collect(args.directory)
    sortable = columns(rows)[2 : -len(FACTS)]
    if args.sort_by not in sortable:
        sys.exit(f"glowlab-report: error: --sort-by {args.sort_by}: choose from {list(sortable)}")
    rows = sort_rows(rows, args.sort_by)
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
