"""Is B better than A? Train both for several seeds, side by side, and test the difference.

A and B are ``glowlab-train`` runs that differ in their overrides (``--a`` and ``--b``, e.g.
``--a "" --b "model/transform=additive"``) or in their code (``--a-commit <rev>``,
``--b-commit <rev>``: that arm runs the code of a git revision, checked out in a temporary
worktree, with the same venv; without, this checkout's code). Each arm is trained once per
seed (``seed=<s>`` is appended), ``--parallel`` runs at a time (each with
``OMP_NUM_THREADS=1`` when more than one runs), alternating arms so that both see the same
machine load. The script prints, per arm, the mean ± standard error of the metric
(``test/bpd`` by default) and of the wall time, then the difference B − A with Welch's t-test
(two-sided), and writes every run's numbers to ``--out``/seed_compare.json.

Wall-clock budgets (``trainer.max_time``) make results depend on the machine's load: compare
only runs of one invocation, and read the ``stopped_by`` column.

Example (the main job against the code of an earlier commit, 3 seeds)::

    python scripts/seed_compare.py --seeds 0 1 2 --a-commit fa7b579 \\
        --a "experiment=fmnist_glow_cpu" --b "experiment=fmnist_glow_cpu"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scipy.stats import ttest_ind

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default="", help="overrides of arm A (one shell-quoted string)")
    parser.add_argument("--b", default="", help="overrides of arm B")
    parser.add_argument("--a-commit", help="run arm A with the code of this git revision")
    parser.add_argument("--b-commit", help="run arm B with the code of this git revision")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--metric", default="test/bpd", help="a key of metrics.json")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "seed_compare")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds needs at least 2 seeds for a standard error")
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    return args


def worktree(revision: str, into: Path) -> Path:
    """A detached git worktree of ``revision`` at ``into`` (for arm A's code)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), revision],
        check=True,
        capture_output=True,
        text=True,
    )
    return into


def train(code: Path, overrides: str, seed: int, run_dir: Path, threads: int) -> dict:
    """One ``python -m glowlab.train`` with ``code``'s package first on the path; returns its
    metrics.json (``{"error": ...}`` when it failed)."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads)}
    command = [
        sys.executable, "-m", "glowlab.train", *shlex.split(overrides), f"seed={seed}",
        f"hydra.run.dir={run_dir}", "callbacks.progress_bar=null",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    metrics = run_dir / "metrics.json"
    if result.returncode != 0 or not metrics.is_file():
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {result.returncode}: {tail}", "command": " ".join(command)}
    return json.loads(metrics.read_text()) | {"command": " ".join(command)}


def summary(values: list[float]) -> str:
    mean, se = statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.4f} ± {se:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glowlab-ref-") as scratch:
        revisions = {"A": args.a_commit, "B": args.b_commit}
        code = {
            arm: worktree(rev, Path(scratch) / arm) if rev else ROOT
            for arm, rev in revisions.items()
        }
        jobs = [
            (arm, code[arm], overrides, seed)
            for seed in args.seeds
            for arm, overrides in (("A", args.a), ("B", args.b))
        ]
        threads = 1 if args.parallel > 1 else os.cpu_count() or 1
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(
                pool.map(
                    lambda job: train(
                        job[1], job[2], job[3], args.out / f"{job[0]}_seed{job[3]}", threads
                    ),
                    jobs,
                )
            )
        for arm, rev in revisions.items():
            if rev:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(code[arm])], check=False)  # fmt: skip
    runs = [
        {"arm": arm, "seed": seed, **result}
        for (arm, _, _, seed), result in zip(jobs, results, strict=True)
    ]
    (args.out / "seed_compare.json").write_text(json.dumps(runs, indent=2) + "\n")
    failed = [r for r in runs if "error" in r]
    for run in failed:
        print(f"arm {run['arm']} seed {run['seed']} failed: {run['error']}", file=sys.stderr)
    if failed:
        return 1
    values = {arm: [r[args.metric] for r in runs if r["arm"] == arm] for arm in "AB"}
    for arm in "AB":
        label = revisions[arm] or "this checkout"
        mine = [r for r in runs if r["arm"] == arm]
        wall = summary([r["wall_time_s"] for r in mine])
        stops = sorted({str(r.get("stopped_by")) for r in mine})
        print(
            f"{arm} ({label}; {getattr(args, arm.lower()) or 'no overrides'}): "
            f"{args.metric} {summary(values[arm])}, wall {wall} s, stopped by {stops}"
        )
    diff = statistics.mean(values["B"]) - statistics.mean(values["A"])
    test = ttest_ind(values["B"], values["A"], equal_var=False)
    verdict = "significant" if test.pvalue < 0.05 else "not significant"
    print(
        f"B - A: {diff:+.4f} {args.metric} (Welch t = {test.statistic:.2f}, "
        f"p = {test.pvalue:.3f}: {verdict} at 5 %, {len(args.seeds)} seeds per arm)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
