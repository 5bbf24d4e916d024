"""Sweeps (``-m``) with a bad job: the others finish, the error names the job and its dir, and
``glowlab-report`` lists the failed and unfinished jobs beside the finished rows."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from glowlab.report import main as report_main
from glowlab.sweeps import BASIC_SWEEPER, FAILED, job_statuses

TINY = [
    "data=synthetic",
    "data.image_size=12",
    "data.batch_size=16",
    "data.train_subset=32",
    "model.depth=1",
    "model.conditioner.hidden=8",
    "module.init_batch_size=32",
    "module.scheduler.warmup_steps=1",
    "trainer.max_steps=2",
    "callbacks=minimal",
    "logger=csv",
    "test=false",
]


def _sweep(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, Path]:
    done = subprocess.run(
        [sys.executable, "-m", "glowlab.train", "-m", *TINY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    [sweep] = cwd.glob("logs/train/multiruns/*")
    return done, sweep


def _report(sweep: Path) -> list[dict[str, str]]:
    report_main([str(sweep)])
    return list(csv.DictReader((sweep / "report.csv").open()))


@pytest.mark.slow
def test_a_bad_job_is_refused_before_any_runs_and_the_others_finish(tmp_path: Path) -> None:
    done, sweep = _sweep(["model.depth=1,-1,1"], tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    refused = f"glowlab-train: error: job #1 (model.depth=-1) in {sweep.relative_to(tmp_path)}/1: "
    [line] = [line for line in done.stderr.splitlines() if line.startswith(refused)]
    assert "model.depth=-1" in line and line.endswith("(refused: it will not run)")
    assert done.stderr.splitlines()[0] == line  # before any job's output
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("glowlab-train: error: 1 of 3 sweep jobs failed: job #1 (model.depth=-1)")
    )
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "2" / "metrics.json").is_file()
    record = json.loads((sweep / "1" / FAILED).read_text())
    assert record["job"] == 1 and record["stage"] == "check"
    assert "model.depth=-1" in record["error"]
    assert not (sweep / "1" / "checkpoints").exists()
    rows = {row["run"]: row for row in _report(sweep)}
    assert rows["0"]["status"] == rows["2"]["status"] == "finished"
    assert rows["1"]["status"] == "failed" and rows["1"]["error"] == record["error"]
    assert "1 job(s) did not finish" in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_a_job_failing_at_run_time_does_not_stop_a_parallel_sweep(tmp_path: Path) -> None:
    """joblib: job #0 fails while building (12 px cannot take 3 levels); job #1 runs on."""
    done, sweep = _sweep(["model.levels=3,1", "hydra/launcher=joblib"], tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "error: job #0 (model.levels=3)" in line]
    assert len(lines) == 1 and f"in {sweep.resolve()}/0: image size 12×12" in lines[0]
    assert "1 of 2 sweep jobs failed" in done.stderr.strip().splitlines()[-1]
    assert json.loads((sweep / "0" / FAILED).read_text())["stage"] == "run"
    assert json.loads((sweep / "1" / "metrics.json").read_text())["steps"] == 2
    statuses = [(row["run"], row["status"]) for row in _report(sweep)]
    assert statuses == [("1", "finished"), ("0", "failed")]


def _fake_sweep(root: Path) -> Path:
    """A sweep of 4 jobs (depth 1,2 × seed 0,1): #0 finished, #1 failed, #2 started (killed),
    #3 never started."""
    sweep = root / "multiruns" / "t"
    sweep.mkdir(parents=True)
    config = {
        "hydra": {
            "sweeper": {"_target_": BASIC_SWEEPER, "params": None},
            "overrides": {"task": ["model.depth=1,2", "seed=0,1"]},
            "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
            "job": {"num": 0},
        }
    }
    OmegaConf.save(OmegaConf.create(config), sweep / "multirun.yaml")
    (sweep / "0").mkdir()
    metrics = {"overrides": ["model.depth=1", "seed=0"], "val/bpd": 3.5, "test/bpd": 3.6}
    (sweep / "0" / "metrics.json").write_text(json.dumps(metrics))
    (sweep / "1").mkdir()
    failure = {"job": 1, "overrides": ["model.depth=1", "seed=1"], "error": "boom", "stage": "run"}
    (sweep / "1" / FAILED).write_text(json.dumps(failure))
    (sweep / "2").mkdir()
    return sweep


def test_the_report_lists_failed_unfinished_and_missing_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = _fake_sweep(tmp_path)
    assert job_statuses(sweep) == [
        {"run": "1", "overrides": "model.depth=1 seed=1", "error": "boom", "status": "failed"},
        {"run": "2", "overrides": "model.depth=2 seed=0", "error": "", "status": "unfinished"},
        {"run": "3", "overrides": "model.depth=2 seed=1", "error": "", "status": "not run"},
    ]
    rows = _report(tmp_path)
    assert [(r["run"], r["status"], r["test/bpd"]) for r in rows] == [
        ("multiruns/t/0", "finished", "3.6"),
        ("multiruns/t/1", "failed", ""),
        ("multiruns/t/2", "unfinished", ""),
        ("multiruns/t/3", "not run", ""),
    ]
    printed = capsys.readouterr().out
    assert "| multiruns/t/0 | model.depth=1 seed=0 | 3.5000 | 3.6000 |" in printed
    assert "3 job(s) did not finish:" in printed
    assert "| multiruns/t/1 | model.depth=1 seed=1 | failed | boom |" in printed


def test_a_report_of_only_failed_jobs_is_not_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    failure = {"job": 0, "overrides": ["a=1"], "error": "x | y", "stage": "run"}
    (tmp_path / "run" / FAILED).write_text(json.dumps(failure))
    report_main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "No run finished." in printed and "| run | a=1 | failed | x \\| y |" in printed
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no metrics.json under"):
        report_main([str(tmp_path / "empty")])
