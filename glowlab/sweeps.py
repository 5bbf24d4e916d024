"""Sweeps (``-m``) that go on past a bad job and say which jobs failed.

- Before any job runs, ``glowlab.sweep_check.SweepCallback`` composes every job of a
  basic-sweeper sweep and runs the config checks of ``glowlab.cli.check_config``; a job that
  fails them is refused: one line naming its number, overrides and dir, and a ``failed.json``
  there (the job then skips).
- A job that fails while it runs with a user error writes ``failed.json`` and returns; the
  sweep goes on (a bug still raises, with its traceback).
- At the end, a line counts the failed jobs and the app exits 1; ``glowlab-report`` lists the
  failed jobs and the ones that never finished (`job_statuses`) beside the finished rows.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from glowlab.console import FILE_ONLY
from glowlab.outputs import write_text
from glowlab.overrides import key_of, sweep_jobs
from glowlab.overrides import swept_keys as override_keys_swept

FAILED = "failed.json"
"""A failed job's record in its dir: ``{"job", "overrides", "error", "stage"}``."""
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
log = logging.getLogger("glowlab.sweeps")


def in_sweep() -> bool:
    """Whether this process runs one job of a ``-m`` sweep."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def swept_keys(config: DictConfig) -> set[str]:
    """The keys a sweep varies (comma lists, ranges, ``hydra.sweeper.params``)."""
    keys = override_keys_swept(list(config.hydra.overrides.task))
    return keys | {str(k) for k in (config.hydra.sweeper.get("params") or {})}


def job_label(number: Any, overrides: Sequence[str], swept: set[str] | None = None) -> str:
    """``job #1 (model.depth=-1)``: the job's swept overrides (all of them if none is known)."""
    shown = [o for o in overrides if swept and key_of(o) in swept]
    return f"job #{number} ({' '.join(shown or overrides)})"


def write_failure(job_dir: Path, number: Any, overrides: Sequence[str], error: str, stage: str):
    """Write ``failed.json`` in ``job_dir`` (atomically, through ``glowlab.outputs``)."""
    record = {"job": number, "overrides": list(overrides), "error": error, "stage": stage}
    write_text(job_dir / FAILED, json.dumps(record, indent=2) + "\n", what="job record")


def failure_line(prog: str, label: str, job_dir: Path, error: str) -> str:
    return f"{prog}: error: {label} in {job_dir}: {error}"


def record_failure(prog: str, error: str) -> None:
    """In a sweep job: write its ``failed.json`` and print one line naming the job."""
    hydra = HydraConfig.get()
    job_dir = Path(hydra.runtime.output_dir)
    overrides = list(hydra.overrides.task)
    write_failure(job_dir, hydra.job.num, overrides, error, stage="run")
    master = Path(hydra.sweep.dir) / "multirun.yaml"
    swept = swept_keys(OmegaConf.load(master)) if master.is_file() else None
    line = failure_line(prog, job_label(hydra.job.num, overrides, swept), job_dir, error)
    print(line, file=sys.stderr, flush=True)
    log.error("%s", line, extra=FILE_ONLY)


def refused_before_launch() -> bool:
    """In a sweep job: whether `SweepCallback` refused this job (its line was printed then;
    it is logged to the job's log file now)."""
    path = Path(HydraConfig.get().runtime.output_dir) / FAILED
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    if record.get("stage") != "check":
        return False
    log.error("refused before the sweep started: %s", record["error"], extra=FILE_ONLY)
    return True


def sweep_overrides(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides of the sweep whose config (``multirun.yaml``) is ``config``, or
    None when its sweeper is not Hydra's basic one (Optuna samples its trials)."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    return sweep_jobs([*params, *config.hydra.overrides.task])


def job_subdir(config: DictConfig, number: int) -> str:
    """Job ``number``'s subdir in the sweep of ``config`` (``hydra.sweep.subdir``, by default
    the number itself)."""
    node = OmegaConf.masked_copy(config, ["hydra"])
    with open_dict(node):
        node.hydra.job.num = number
    try:
        return str(node.hydra.sweep.subdir)
    except Exception:  # noqa: BLE001 - a subdir naming more than the job number
        return str(number)


def job_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """The jobs of the sweep in ``sweep_dir`` (from its ``multirun.yaml``) that did not finish:
    ``{"run", "overrides", "status", "error"}`` with status ``failed`` (``failed.json``),
    ``unfinished`` (started, no ``metrics.json``: killed or still running) or ``not run``."""
    config = OmegaConf.load(sweep_dir / "multirun.yaml")
    jobs = sweep_overrides(config)
    if jobs is None:
        numbers = sorted(int(p.name) for p in sweep_dir.iterdir() if p.name.isdigit())
        jobs_by_number = dict.fromkeys(numbers)
    else:
        jobs_by_number = dict(enumerate(jobs))
    rows = []
    for number, overrides in jobs_by_number.items():
        path = sweep_dir / job_subdir(config, number)
        if (path / "metrics.json").is_file():
            continue
        row = {"run": str(number), "overrides": " ".join(overrides or []), "error": ""}
        if (path / FAILED).is_file():
            record = json.loads((path / FAILED).read_text())
            row.update(status="failed", error=record["error"])
            row["overrides"] = " ".join(record["overrides"])
        else:
            row["status"] = "unfinished" if path.is_dir() else "not run"
        rows.append(row)
    return rows


def prog_of(config: DictConfig) -> str:
    return f"glowlab-{config.hydra.job.config_name}"
