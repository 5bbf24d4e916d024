"""The Hydra callback of sweeps (``hydra.callbacks`` in ``conf/hydra/default.yaml``).

Before any job of a basic-sweeper sweep runs, every job's config is composed and put through
``glowlab.cli.check_config``; a job that fails is refused (one line, ``failed.json``). At the
end, a sweep with failed jobs says how many in one line and exits 1. Apart from
``glowlab.sweeps`` (the job records, which ``glowlab.cli`` also writes) so that neither module
imports the other inside a function.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from glowlab.cli import check_config, config_error
from glowlab.sweeps import (
    FAILED,
    failure_line,
    job_label,
    prog_of,
    sweep_overrides,
    swept_keys,
    write_failure,
)


class SweepCallback(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/hydra/default.yaml``): check every job
    before any runs, and end a sweep with failed jobs with one line and exit status 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = sweep_overrides(config)
        if jobs is None:
            return
        loader = GlobalHydra.instance().config_loader()
        saved = HydraConfig.instance().cfg
        try:
            for number, overrides in enumerate(jobs):
                job = loader.load_sweep_config(config, list(overrides))
                with open_dict(job):
                    job.hydra.job.num = number
                    path = Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
                    job.hydra.runtime.output_dir = str(path)
                HydraConfig.instance().set_config(job)
                try:
                    check_config(job)
                except Exception as error:  # noqa: BLE001 - user errors refuse the job
                    message = config_error(error)
                    if message is None:
                        raise
                    write_failure(path, number, overrides, message, stage="check")
                    label = job_label(number, overrides, swept_keys(config))
                    line = failure_line(prog_of(config), label, path, message)
                    print(f"{line} (refused: it will not run)", file=sys.stderr, flush=True)
        finally:
            HydraConfig.instance().cfg = saved

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob(f"*/{FAILED}"), key=lambda p: p.parent.name)
        if not failed:
            return
        records = [json.loads(p.read_text()) for p in failed]
        jobs = sweep_overrides(config)
        total = len(jobs) if jobs is not None else len(list(sweep_dir.glob("*/.hydra")))
        swept = swept_keys(config)
        names = ", ".join(job_label(r["job"], r["overrides"], swept) for r in records)
        raise SystemExit(
            f"{prog_of(config)}: error: {len(records)} of {total} sweep jobs failed: {names} "
            f"(errors in their {FAILED}); the others finished: glowlab-report {sweep_dir} "
            "lists them all"
        )
