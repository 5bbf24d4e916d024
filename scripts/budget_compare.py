"""Compare flow families at equal wall-clock time on Fashion-MNIST.

Each entry is ``name=<glowlab-train overrides>`` (comma-free; several overrides separated by
spaces). For every entry the script

1. probes the training speed: runs of ``--probe-steps`` and twice as many steps with
   validation and test off; the difference of their fit times over the extra steps is the
   time per step, start-up excluded;
2. trains for the steps that fit ``--budget`` seconds minus ``--reserve`` (start-up), with
   ``trainer.max_time`` as a safety net and no validation, then tests the final weights on
   the first ``--test-batches`` eval batches (500 images each in the Fashion-MNIST
   experiments); the test pass is timed apart (an ODE model's likelihood is slow);
3. writes a markdown table (test bpd, steps, wall time, parameters) to ``--out``/report.md.

``--parallel 2`` runs two entries at a time (each then gets ``OMP_NUM_THREADS=1``); with
``--parallel 1`` each run has the whole machine. The budget is wall time, so compare the
numbers only within one invocation on one machine.

Example::

    python scripts/budget_compare.py --budget 600 --parallel 2 \\
        glow_cpu="experiment=fmnist_glow_cpu" \\
        tarflow="experiment=fmnist_tarflow_cpu"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def _train(name: str, overrides: list[str], run_dir: Path, threads: int) -> dict:
    """One ``glowlab-train`` run in ``run_dir``; its metrics.json (raises on failure)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [PYTHON, "-m", "glowlab.train", *overrides, f"hydra.run.dir={run_dir}"]
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: glowlab-train exited {result.returncode}; see {log.name}")
    return json.loads((run_dir / "metrics.json").read_text())


def _common(steps: int, val_batches: int, test_batches: int) -> list[str]:
    """Overrides of every run: ``steps`` steps, one validation at the end, no grids."""
    return [
        "++callbacks.progress_bar=null",
        "++callbacks.sample_grid=null",
        "logger=csv",
        "++trainer.max_epochs=-1",
        f"++trainer.max_steps={steps}",
        "++trainer.check_val_every_n_epoch=null",
        f"++trainer.val_check_interval={steps}",
        f"++trainer.limit_val_batches={val_batches}",
        f"++trainer.limit_test_batches={test_batches}",
    ]


def probe(name: str, overrides: list[str], out: Path, steps: int, threads: int) -> float:
    """Seconds per training step: the difference of two runs' fit times (``steps`` and
    ``2·steps``, validation and test off) over ``steps``, so start-up does not count."""
    times = []
    for n in (steps, 2 * steps):
        run = [*overrides, *_common(n, val_batches=0, test_batches=0), "test=false"]
        metrics = _train(name, run, out / f"probe{n}_{name}", threads)
        times.append(metrics["fit_time_s"])
    return max(times[1] - times[0], 1e-3) / steps


def full_run(name: str, overrides: list[str], out: Path, args, threads: int) -> dict:
    seconds_per_step = probe(name, overrides, out, args.probe_steps, threads)
    steps = max(int((args.budget - args.reserve) / seconds_per_step), 10)
    started = time.perf_counter()
    metrics = _train(
        name,
        [
            *overrides,
            *_common(steps, val_batches=0, test_batches=args.test_batches),
            f"++trainer.max_time={_clock(args.budget)}",
        ],
        out / name,
        threads,
    )
    metrics["command_wall_s"] = round(time.perf_counter() - started, 1)
    metrics["probe_s_per_step"] = round(seconds_per_step, 4)
    return {"name": name, **metrics}


def _clock(seconds: float) -> str:
    """Lightning's ``DD:HH:MM:SS``."""
    s = int(seconds)
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def table(rows: list[dict]) -> str:
    lines = [
        "| run | test (first images) | steps | probe s/step | fit time | test time | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: _score(r)[1]):
        metric, value = _score(row)
        lines.append(
            f"| {row['name']} | {metric} {value:.4f} | {row['steps']} | "
            f"{row['probe_s_per_step']} | {row['fit_time_s']:.0f} s | "
            f"{row['wall_time_s'] - row['fit_time_s']:.0f} s | {row['parameters']:,} |"
        )
    return "\n".join(lines) + "\n"


def _score(row: dict) -> tuple[str, float]:
    """The row's test metric: ``test/bpd``, else the bpd-like name the run reports instead
    (``test/noisy_bpd``), shown with its name so the two are never mixed."""
    if row.get("test/bpd") is not None:
        return "test/bpd", float(row["test/bpd"])
    for key, value in row.items():
        if key.startswith("test/") and key.endswith("bpd") and value is not None:
            return key, float(value)
    return "test/bpd", float("inf")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", nargs="+", help='name="override override ..."')
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--reserve", type=float, default=60.0, help="seconds kept for eval")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--test-batches", type=int, default=1, help="eval batches to test on")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "budget_compare")
    args = parser.parse_args(argv)
    entries = {}
    for entry in args.entries:
        name, _, overrides = entry.partition("=")
        if not overrides:
            parser.error(f"{entry!r} is not name=<overrides>")
        entries[name] = shlex.split(overrides)
    out = args.out / time.strftime("%Y-%m-%d_%H-%M-%S")
    threads = 1 if args.parallel > 1 else int(os.environ.get("OMP_NUM_THREADS", "2"))
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [
            pool.submit(full_run, name, overrides, out, args, threads)
            for name, overrides in entries.items()
        ]
        rows = [future.result() for future in futures]
    report = table(rows)
    (out / "report.md").write_text(report)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    print(report, end="")
    print(f"\nwrote {out / 'report.md'}")


if __name__ == "__main__":
    main()
