"""``glowlab-compare``: flow families trained for the same wall time on this machine, then
compared on test bpd, sample quality and sampling speed.

Examples::

    glowlab-compare                                   # the six Fashion-MNIST CPU presets
    glowlab-compare entries=[glow_cpu,tarflow] budget=120 parallel=2
    glowlab-compare '+presets.mine.train=["experiment=fmnist_glow_cpu","model.depth=8"]' \\
        entries=[glow_cpu,mine]

Each entry (``presets.<name>``: its glowlab-train overrides ``train``, and optionally
``test_images`` and ``val_batches``) runs as child processes, each with its Hydra run dir and a
log file under ``<run dir>/<name>/``:

1. ``probe``: ``probe_steps`` training steps without validation; its `TrainClock` gives the
   seconds per step, start-up and the first quarter of the steps left out;
2. ``train``: the steps that fit ``budget`` at that speed (a multiple of ``validations``),
   validated ``validations`` times on ``val_batches`` batches (the bpd vs time curve, in
   seconds of training), and stopped by `TrainClock` once ``budget`` seconds are spent;
3. ``test``: ``glowlab-eval metrics=[bpd]`` on the final weights, on the whole test split, or
   on the first ``test_images`` (the table then says so; every bpd has its standard error);
4. ``T<t>``: ``glowlab-eval metrics=<sample_metrics>`` on samples at each temperature;
5. ``grid``: ``glowlab-sample``'s grid of ``grid_n`` samples at ``grid_temperature``.

Why a probe-sized step budget with a training clock, not ``trainer.max_time``: every preset's
learning-rate schedule (warm-up, cosine decay) is laid out over ``trainer.max_steps``, and a
run cut by a timer stops at a high learning rate, which penalises the slow families twice; and
Lightning's timer counts validation, checkpoints and start-up, which differ by family (an ODE
model's validation takes minutes). So the schedule is sized from the probe and the clock counts
training only; should steps get slower than probed, the clock still stops the run at
``budget`` and the table shows the steps done of those planned.

Every entry is trained (1-2) before any is tested or sampled (3-5), so a training run shares
the machine only with another training run. ``parallel=2`` runs two entries at a time, each
child with half the threads (``OMP_NUM_THREADS``, else the CPU count, divided by ``parallel``).
The budget is wall time: compare numbers within one run on one machine. A child that fails
is one line naming the entry and its log; the other entries go on, the table marks the failed
one and the command exits 1 at the end.

Writes ``compare.md`` (the table), ``compare.json`` (every number), ``bpd_vs_time.png``,
``fid_vs_temperature.png`` (the first sample metric vs temperature; not drawn when
``sample_metrics=[]``) and ``samples.png`` (a grid per entry) to the run dir.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, ListConfig
from PIL import Image

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.outputs import save_image, write_text
from glowlab.overrides import did_you_mean
from glowlab.tools.cli import as_list, log, output_dir, write_json
from glowlab.tools.plots import line_plot, side_by_side
from glowlab.tools.sample import check_temperatures
from glowlab.validation import Range, check_int

CLOCK_FILE = "train_clock.json"
EVAL, SAMPLE = "glowlab.tools.evaluate", "glowlab.tools.sample"  # the child apps


class TrainClock(L.Callback):
    """The seconds of training of a ``glowlab-train`` run: wall time from the start of a
    training batch on, paused from the start of each validation to the next training batch (so
    validation, the checkpoints it writes and the sanity check do not count).

    Writes ``path`` (JSON) after each validation and at the end of training: ``steps``,
    ``train_s``, ``warm_step`` and ``warm_train_s`` (the clock once ``warm_steps`` steps are
    done: ``(train_s - warm_train_s) / (steps - warm_step)`` is the time per step without the
    first steps), ``budget_s``, ``stopped_by_budget`` and ``validations`` (``step``,
    ``train_s`` and every ``val/`` metric). With ``budget_s`` it stops the run once that many
    seconds are spent (``trainer.should_stop``, after which Lightning validates once more).
    Added to a run with ``+callbacks.train_clock._target_=glowlab.tools.compare.TrainClock``.
    """

    def __init__(self, path: str, budget_s: float | None = None, warm_steps: int = 0) -> None:
        self.path = Path(path)
        self.budget_s = budget_s
        self.warm_steps = warm_steps
        self.train_s = 0.0
        self.started: float | None = None  # perf_counter of the running stretch; None: paused
        self.warm: tuple[int, float] | None = None
        self.stopped_by_budget = False
        self.validations: list[dict[str, float]] = []

    def elapsed(self) -> float:
        running = 0.0 if self.started is None else time.perf_counter() - self.started
        return self.train_s + running

    def _pause(self) -> None:
        self.train_s, self.started = self.elapsed(), None

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        if self.warm is None and trainer.global_step >= self.warm_steps:
            self.warm = (trainer.global_step, self.elapsed())
        if self.budget_s is not None and self.elapsed() >= self.budget_s:
            self.stopped_by_budget = trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._pause()

    def on_validation_end(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        values = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
        point = {"step": trainer.global_step, "train_s": round(self.train_s, 3)}
        self.validations.append({**point, **values})
        self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._pause()
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        warm_step, warm_s = self.warm or (0, 0.0)
        summary = {
            "steps": trainer.global_step,
            "train_s": round(self.train_s, 3),
            "warm_step": warm_step,
            "warm_train_s": round(warm_s, 3),
            "budget_s": self.budget_s,
            "stopped_by_budget": self.stopped_by_budget,
            "validations": self.validations,
        }
        write_text(self.path, json.dumps(summary, indent=1) + "\n", what="training clock")


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Entry:
    """A preset to compare: ``train``, its glowlab-train overrides; ``test_images``, the first
    N test images it is tested on (None: the whole split); ``val_batches`` per curve point."""

    name: str
    train: list[str]
    test_images: int | None
    val_batches: int


ENTRY_KEYS = ("train", "test_images", "val_batches")


@dataclass(frozen=True)
class Settings:
    """What every entry shares (``conf/compare.yaml``), checked."""

    budget: float
    probe_steps: int
    validations: int
    temperatures: list[float]
    sample_metrics: list[str]
    sample_images: int
    eval_overrides: list[str]
    grid_n: int
    grid_temperature: float
    seed: int
    parallel: int
    threads: int


def _texts(option: str, value: Any, example: str) -> list[str]:
    """``value`` as a list of strings, else ``ValueError`` naming ``option``."""
    if not isinstance(value, ListConfig | list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{option}={value!r} must be a list of strings, e.g. {example}")
    return [str(v) for v in value]


def settings(cfg: DictConfig) -> Settings:
    """The checked shared settings of ``cfg`` (``ValueError`` naming the first bad one)."""
    Range(float, 0, low_open=True, example=360).check("budget", cfg.budget)
    for option, low in (("probe_steps", 4), ("validations", 1), ("val_batches", 1)):
        check_int(option, cfg[option], low)
    for option in ("sample_images", "grid_n", "parallel"):
        check_int(option, cfg[option])
    Range(float, 0, note="1 samples the model").check("grid_temperature", cfg.grid_temperature)
    metrics = _texts("sample_metrics", cfg.sample_metrics, "sample_metrics=[fid,kid]")
    overrides = _texts("eval_overrides", cfg.eval_overrides, 'eval_overrides=["device=cpu"]')
    threads = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(threads) if threads.isdigit() and int(threads) > 0 else os.cpu_count() or 1
    return Settings(
        budget=float(cfg.budget),
        probe_steps=cfg.probe_steps,
        validations=cfg.validations,
        temperatures=check_temperatures(cfg.temperatures),
        sample_metrics=metrics,
        sample_images=cfg.sample_images,
        eval_overrides=overrides,
        grid_n=cfg.grid_n,
        grid_temperature=float(cfg.grid_temperature),
        seed=cfg.seed,
        parallel=cfg.parallel,
        threads=max(1, threads // cfg.parallel),
    )


def chosen_entries(cfg: DictConfig) -> list[Entry]:
    """The presets named by ``cfg.entries``, in that order (``ValueError`` for an unknown or
    repeated name, or a preset that is not a list of overrides or a node of ``ENTRY_KEYS``)."""
    names = [str(name) for name in as_list(cfg.entries)]
    if not names:
        raise ValueError("entries=[] names no preset; pass e.g. entries=[glow_cpu,tarflow]")
    known = [str(name) for name in cfg.presets]
    entries = []
    for name in names:
        if name not in known:
            raise ValueError(
                f"entries: {name!r} is not a preset; {did_you_mean(name, known)}; add one "
                f"with '+presets.{name}.train=[\"experiment=...\"]'"
            )
        if names.count(name) > 1:
            raise ValueError(f"entries: {name!r} is named twice; name each preset once")
        entries.append(_entry(name, cfg.presets[name], cfg.val_batches))
    return entries


def _entry(name: str, node: Any, val_batches: int) -> Entry:
    key = f"presets.{name}"
    if isinstance(node, ListConfig):  # the short form: the overrides alone
        node = {"train": node}
    if not isinstance(node, DictConfig | dict):
        raise ValueError(f"{key}={node!r} must be a node with train: [<glowlab-train overrides>]")
    for option in node:
        if option not in ENTRY_KEYS:
            raise ValueError(
                f"{key}.{option} is not an entry option; "
                f"{did_you_mean(str(option), ENTRY_KEYS, f'{key}.')}"
            )
    example = f"'{key}.train=[\"experiment=fmnist_glow_cpu\"]'"
    train = _texts(f"{key}.train", node.get("train"), example)
    if not train:
        raise ValueError(f"{key}.train is empty; give its glowlab-train overrides, e.g. {example}")
    test_images = node.get("test_images")
    check_int(f"{key}.test_images", test_images, optional=True)
    val_batches = node.get("val_batches", val_batches)
    check_int(f"{key}.val_batches", val_batches)
    return Entry(name, train, test_images, val_batches)


# --------------------------------------------------------------------------- the children


HYDRA_ADVICE = ("Set the environment variable HYDRA_FULL_ERROR", "full_key: ")


class ChildFailed(Exception):
    """A child process exited non-zero; the message names it, its error and its log."""


def child(module: str, args: list[str], run_dir: Path, threads: int) -> Path:
    """Run ``python -m <module> <args>`` with Hydra run dir ``run_dir`` and ``threads`` threads,
    its output in ``<run_dir>.log``; return ``run_dir``, or raise `ChildFailed`."""
    command = [sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"]
    log_path = run_dir.parent / f"{run_dir.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log_path.open("w") as out:
        out.write(shlex.join(command) + "\n")
        out.flush()
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise ChildFailed(
            f"{run_dir.name} exited {code} ({_last_error(log_path)}); log {log_path}"
        )
    return run_dir


def _last_error(log_path: Path) -> str:
    """The child's own error line (``glowlab-x: error: ...``), else its last line (Hydra's
    advice on seeing the full trace left out)."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines[1:] if line and not line.startswith(HYDRA_ADVICE)]
    errors = [line for line in lines if ": error: " in line]
    return (errors or lines or ["no output"])[-1][:300]


PROTOCOL = [
    "logger=csv",
    "++callbacks.progress_bar=null",
    "++callbacks.sample_grid=null",
    "++trainer.max_epochs=-1",
    "++trainer.max_time=null",
    "++trainer.check_val_every_n_epoch=null",
    "++trainer.num_sanity_val_steps=0",
    "test=false",
]
"""glowlab-train overrides of every run, after the entry's: a step budget, no timer, no test
(glowlab-eval tests), CSV logs, no progress bar or sample grids."""


def _train_args(
    entry: Entry, s: Settings, run_dir: Path, steps: int, val: int, budget: float | None
) -> list[str]:
    """The glowlab-train arguments of a run of ``steps`` steps validated every ``steps //
    validations`` steps on ``val`` batches (0: never), its clock stopping it at ``budget``."""
    clock = "+callbacks.train_clock"
    return [
        *entry.train,
        *PROTOCOL,
        f"seed={s.seed}",
        f"++trainer.max_steps={steps}",
        f"++trainer.val_check_interval={max(1, steps // s.validations)}",
        f"++trainer.limit_val_batches={val}",
        f"{clock}._target_=glowlab.tools.compare.TrainClock",
        f"{clock}.path={run_dir / CLOCK_FILE}",
        f"{clock}.budget_s={'null' if budget is None else budget}",
        f"{clock}.warm_steps={s.probe_steps // 4}",
    ]


def train_entry(entry: Entry, s: Settings, folder: Path, row: dict[str, Any]) -> Path:
    """Probe, then train ``entry`` for ``s.budget`` seconds; fill ``row`` and return the final
    weights (``last.ckpt``)."""
    probe = folder / "probe"
    child("glowlab.train", _train_args(entry, s, probe, s.probe_steps, 0, None), probe, s.threads)
    clock = json.loads((probe / CLOCK_FILE).read_text())
    timed = max(clock["steps"] - clock["warm_step"], 1)
    per_step = max(clock["train_s"] - clock["warm_train_s"], 1e-6) / timed
    interval = max(1, math.floor(s.budget / per_step) // s.validations)
    planned = interval * s.validations
    row.update(probe_s_per_step=round(per_step, 5), steps_planned=planned)
    say(f"glowlab-compare: {entry.name}: {per_step:.4f} s/step, training {planned} steps", log)
    run_dir = folder / "train"
    args = _train_args(entry, s, run_dir, planned, entry.val_batches, s.budget)
    child("glowlab.train", args, run_dir, s.threads)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    clock = json.loads((run_dir / CLOCK_FILE).read_text())
    key = f"val/{metrics['metric']}"
    row.update(
        steps=metrics["steps"],
        train_s=clock["train_s"],
        stopped_by_budget=clock["stopped_by_budget"],
        parameters=metrics["parameters"],
        curve_key=key,
        curve=[
            {"step": p["step"], "train_s": p["train_s"], "value": p[key]}
            for p in clock["validations"]
            if key in p
        ],
    )
    return run_dir / "checkpoints" / "last.ckpt"


def _eval_args(ckpt: Path, s: Settings, *args: str) -> list[str]:
    return [f"ckpt={ckpt}", "progress=false", *args, *s.eval_overrides]


def bpd_entry(entry: Entry, s: Settings, ckpt: Path, folder: Path) -> dict[str, Any]:
    """``glowlab-eval`` bpd of ``ckpt`` on the test split (its first ``entry.test_images``)."""
    subset = [] if entry.test_images is None else [f"max_images={entry.test_images}"]
    args = _eval_args(ckpt, s, "metrics=[bpd]", "samples=1", *subset)
    result = json.loads((child(EVAL, args, folder / "test", s.threads) / "eval.json").read_text())
    key = result["metrics"][0]
    return {
        "key": key,
        "value": result[key],
        "sem": result.get(f"{key}_sem"),
        "images": result["images"],
        "subset": entry.test_images is not None,
    }


def sample_entry(s: Settings, ckpt: Path, folder: Path, row: dict[str, Any]) -> None:
    """``glowlab-eval metrics=<sample_metrics>`` at each temperature into ``row["samples"]``
    (``{T: {key: value, key_sem, key_std, sampling_images_per_s}}``, keys from the eval's
    ``metrics``; KID's ``_std`` is its spread over subsets, not a standard error)."""
    names = ",".join(repr(name) for name in s.sample_metrics)
    sizes = [f"{name}.n={s.sample_images}" for name in s.sample_metrics]
    for t in s.temperatures:
        args = _eval_args(ckpt, s, f"metrics=[{names}]", f"temperature={t}", *sizes)
        result = json.loads(
            (child(EVAL, args, folder / f"T{t:g}", s.threads) / "eval.json").read_text()
        )
        found = {"sampling_images_per_s": result.get("sampling_images_per_s")}
        for key in result["metrics"]:
            spreads = (f"{key}_sem", f"{key}_std", f"{key}_note")
            found.update({k: result.get(k) for k in (key, *spreads)})
        row["sample_keys"] = list(result["metrics"])
        row["samples"][f"{t:g}"] = found


def grid_entry(s: Settings, ckpt: Path, folder: Path) -> dict[str, Any]:
    """``glowlab-sample``'s grid of ``s.grid_n`` samples at ``s.grid_temperature``."""
    t = s.grid_temperature
    args = [f"ckpt={ckpt}", f"n={s.grid_n}", f"temperatures=[{t}]", f"seed={s.seed}"]
    run_dir = child(SAMPLE, [*args, "progress=false"], folder / "grid", s.threads)
    summary = json.loads((run_dir / "sample.json").read_text())
    return {"path": str(run_dir / f"samples_T{t:g}.png"), "images_per_s": summary["images_per_s"]}


def trained(entry: Entry, s: Settings, out: Path) -> dict[str, Any]:
    """Phase 1 of an entry: probe and train (`train_entry`); its row, with ``checkpoint``, the
    final weights, or ``failed``."""
    row: dict[str, Any] = {"name": entry.name, **asdict(entry), "failed": None, "samples": {}}
    try:
        row["checkpoint"] = str(train_entry(entry, s, out / entry.name, row))
    except ChildFailed as failure:
        _failed(row, failure)
    return row


def measured(entry: Entry, s: Settings, out: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Phase 2 of a trained entry: test bpd, sample metrics, grid, into ``row``; the first
    child that fails ends it."""
    if row["failed"]:
        return row
    folder, ckpt = out / entry.name, Path(row["checkpoint"])
    try:
        row["test"] = bpd_entry(entry, s, ckpt, folder)
        if s.sample_metrics:
            sample_entry(s, ckpt, folder, row)
        row["grid"] = grid_entry(s, ckpt, folder)
    except ChildFailed as failure:
        _failed(row, failure)
    return row


def _failed(row: dict[str, Any], failure: ChildFailed) -> None:
    """``row["failed"]`` says which child failed and where its log is; one line on stderr."""
    row["failed"] = str(failure)
    log.error("glowlab-compare: %s: %s", row["name"], failure)


# --------------------------------------------------------------------------- the report


def best_temperature(row: dict[str, Any]) -> str | None:
    """The temperature (as written in ``row["samples"]``) with the lowest value of the first
    sample metric (FID and KID: lower is better), or None."""
    keys = row.get("sample_keys") or [None]
    scored = {t: v[keys[0]] for t, v in row["samples"].items() if v.get(keys[0]) is not None}
    return min(scored, key=scored.get) if scored else None


def sampling_speed(row: dict[str, Any]) -> float | None:
    """Images/s of sampling: the sample metrics' run at T=1 if there is one, else the grid's."""
    at_one = row["samples"].get("1", {}).get("sampling_images_per_s")
    return at_one if at_one is not None else row.get("grid", {}).get("images_per_s")


def _value(found: dict[str, Any], key: str) -> str:
    if found.get(key) is None:
        return "–"
    sem, std = found.get(f"{key}_sem"), found.get(f"{key}_std")
    if sem is not None:
        return f"{found[key]:.4g} ± {sem:.2g}"
    return f"{found[key]:.4g}" + ("" if std is None else f" (sd {std:.2g})")


def _test_cell(test: dict[str, Any] | None) -> str:
    if test is None:
        return "–"
    images = f"first {test['images']:,}" if test["subset"] else f"all {test['images']:,}"
    name = "" if test["key"] == "bpd" else f"{test['key']} "
    sem = "" if test["sem"] is None else f" ± {test['sem']:.4f}"
    return f"{name}{test['value']:.4f}{sem} ({images})"


def _steps_cell(row: dict[str, Any]) -> str:
    if "steps" not in row:
        return "–"
    if row["steps"] >= row["steps_planned"]:
        return f"{row['steps']:,}"
    return f"{row['steps']:,} of {row['steps_planned']:,} (budget spent)"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the rows (one per entry, in order)."""
    keys = next((r["sample_keys"] for r in rows if r.get("sample_keys")), [])
    header = ["entry", "test bpd (images)"]
    header += [f"{k} T=1" for k in keys] + [f"{k} best T" for k in keys]
    header += ["best T"] * bool(keys)
    header += ["sampling images/s", "parameters", "steps", "training", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        best = best_temperature(row)
        cells = [f"`{row['name']}`", _test_cell(row.get("test"))]
        cells += [_value(row["samples"].get("1", {}), k) for k in keys]
        cells += [_value(row["samples"].get(best, {}), k) for k in keys]
        cells += [best or "–"] * bool(keys)
        speed = sampling_speed(row)
        cells += [
            "–" if speed is None else f"{speed:,.1f}",
            f"{row['parameters']:,}" if "parameters" in row else "–",
            _steps_cell(row),
            f"{row['train_s']:.0f} s" if "train_s" in row else "–",
            f"failed: {row['failed']}" if row["failed"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """``bpd_vs_time.png``, ``fid_vs_temperature.png`` and ``samples.png`` from the rows that
    have the numbers (a plot without any is not drawn); the paths written."""
    written = []
    curves = {r["name"]: r["curve"] for r in rows if r.get("curve")}
    if curves:
        key = next(r["curve_key"] for r in rows if r.get("curve"))
        series = {
            n: ([p["train_s"] for p in c], [p["value"] for p in c]) for n, c in curves.items()
        }
        plot = line_plot(series, "seconds of training", key, f"validation {key} vs training time")
        written.append(save_image(plot, out / "bpd_vs_time.png"))
    keys = next((r["sample_keys"] for r in rows if r.get("sample_keys")), [])
    series = {}
    for row in rows:
        found = {
            float(t): v[keys[0]]
            for t, v in row["samples"].items()
            if keys and v.get(keys[0]) is not None
        }
        if found:
            series[row["name"]] = (list(found), list(found.values()))
    if series:
        plot = line_plot(series, "temperature", keys[0], f"{keys[0]} vs sampling temperature")
        written.append(save_image(plot, out / "fid_vs_temperature.png"))
    grids = {}
    for row in rows:
        if row.get("grid"):
            with Image.open(row["grid"]["path"]) as image:
                grids[row["name"]] = image.copy()
    if grids:
        written.append(save_image(side_by_side(grids), out / "samples.png"))
    return written


def report(rows: list[dict[str, Any]], s: Settings, out: Path) -> str:
    """Write ``compare.md``, ``compare.json`` and the plots; return the Markdown."""
    plots = write_plots(rows, out)
    each = f"{s.threads} thread{'s' * (s.threads > 1)} each"
    temperatures = ", ".join(f"{t:g}" for t in s.temperatures)
    sampled = (
        f"sample metrics from {s.sample_images:,} samples at T=1 and at the temperature of "
        f"{temperatures} where the first is lowest; "
        if s.sample_metrics
        else "no sample metrics (sample_metrics=[]); "
    )
    lines = [
        f"# glowlab-compare: {s.budget:g} s of training per entry",
        "",
        table(rows),
        f"Each entry trained for {s.budget:g} s of training time (validation excluded), "
        f"{s.parallel} at a time with {each}, seed {s.seed}; test bpd ± its standard error "
        f"over the images; {sampled}sampling images/s from the T=1 run, else the grid; "
        f"samples.png at T={s.grid_temperature:g}.",
        "",
        *[f"![{path.stem}]({path.name})" for path in plots],
    ]
    markdown = "\n".join(lines) + "\n"
    write_text(out / "compare.md", markdown, what="table")
    summary = {**asdict(s), "plots": [p.name for p in plots], "entries": rows}
    write_json(out / "compare.json", summary)
    return markdown


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: train every entry of ``cfg.entries``, then test and sample each (``parallel``
    at a time), then write the report."""
    s = settings(cfg)
    entries = chosen_entries(cfg)
    out = output_dir(cfg).resolve()
    with ThreadPoolExecutor(s.parallel) as pool:  # training shares the CPU only with training
        rows = list(pool.map(lambda entry: trained(entry, s, out), entries))
        rows = list(pool.map(lambda e, row: measured(e, s, out, row), entries, rows))
    print(table(rows), end="")
    report(rows, s, out)
    say(f"glowlab-compare: wrote {out / 'compare.md'}", log)
    failed = [row["name"] for row in rows if row["failed"]]
    if failed:
        sys.exit(
            f"glowlab-compare: {len(failed)} of {len(rows)} entries failed "
            f"({', '.join(failed)}); their lines above name the logs"
        )
    return {"out": str(out), "entries": rows}


@hydra_app("glowlab-compare", "compare")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-compare", run, cfg)


if __name__ == "__main__":
    main()
