"""The training app: composition, a real run, metrics, resume, and errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from glowlab.cli import user_error
from glowlab.train import fit_and_test, train
from glowlab.training.checkpoints import load_checkpoint
from glowlab.training.run import build_run
from tests.conftest import TINY_RUN, compose_run


def test_tiny_run_writes_metrics_checkpoints_and_samples(tiny_run: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["steps"] == 16
    assert 0 < metrics["test/bpd"] < 10
    assert metrics["ranks_agree"] == {"after_actnorm_init": True, "at_end": True}
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    assert Path(metrics["sample_grid"]).is_file()
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    assert ckpt["glowlab"]["image_shape"] == [1, 8, 8]
    assert ckpt["glowlab"]["config"]["model"]["depth"] == 2
    assert all(torch.is_tensor(v) for v in ckpt["state_dict"].values())


class _StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_run: Path, tmp_path: Path) -> None:
    """Stop a 2-epoch run after its first epoch (same config), resume from last.ckpt."""
    first, resumed = tmp_path / "first_epoch", tmp_path / "resumed"
    run = build_run(compose_run(first, TINY_RUN))
    run.trainer.callbacks.append(_StopAfterFirstEpoch())
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.trainer.current_epoch == 1 and run.trainer.global_step == 8
    last = first / "checkpoints" / "last.ckpt"
    train(compose_run(resumed, [*TINY_RUN, f"ckpt_path={last}"]))
    expected, got = _final_state(tiny_run), _final_state(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def _run_app(args: list[str], cwd: Path, module: str = "glowlab.train", timeout: int = 240):
    """Run a console entry point in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY_CLI = [a for a in TINY_RUN if not a.startswith("callbacks.")] + [
    "callbacks=minimal",
    "logger=csv",
    "trainer.max_epochs=1",
]


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(tmp_path: Path) -> None:
    result = _run_app(
        [*TINY_CLI, "trainer=ddp_cpu", "test=false", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["ranks_agree"] == {"after_actnorm_init": True, "at_end": True}
    assert metrics["steps"] == 4  # 128 images / (2 ranks × 16)


@pytest.mark.slow
def test_multirun_writes_metrics_and_report(tmp_path: Path) -> None:
    """A sweep with the default sweep dir: logs/<task>/multiruns/<time>/<job> under the cwd."""
    result = _run_app(
        ["-m", *TINY_CLI, "model.depth=1,2", "model.conditioner.hidden=8,16"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = tmp_path.glob("logs/*/multiruns/*")
    assert len(list(sweep.glob("*/metrics.json"))) == 4
    report = _run_app([str(sweep)], tmp_path, module="glowlab.report")
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert len(rows) == 4
    depths = [o for r in rows for o in r["overrides"].split() if o.startswith("model.depth=")]
    assert sorted(depths) == ["model.depth=1"] * 2 + ["model.depth=2"] * 2
    test_bpd = [float(r["test/bpd"]) for r in rows]
    assert test_bpd == sorted(test_bpd)
    assert "| run | overrides | val/bpd | test/bpd |" in report.stdout


def test_bad_input_is_one_clear_line_not_a_trace(tmp_path: Path) -> None:
    result = _run_app([*TINY_CLI, "data.n_bits=9", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert result.returncode == 1
    assert "glowlab-train: error: data.n_bits=9 must be an integer in 1..8" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["data.name=svhn"], ValueError, "unknown dataset name='svhn'"),
        (
            ["data=fashion_mnist", "data.root=/nonexistent"],
            FileNotFoundError,
            "apt-get install dataset-fashion-mnist",
        ),
        (["data.n_bits=0"], ValueError, "n_bits"),
        (["data.batch_size=-4"], ValueError, "data.batch_size=-4 must be an integer >= 1"),
        (
            ["module.optimizer.lr=0"],
            ValueError,
            "module.optimizer.lr=0 must be a finite number > 0",
        ),
        (
            ["data.image_size=12", "model.levels=3"],
            ValueError,
            "12×12 is not divisible by 2\\*\\*3",
        ),
        (["model.transform.scale=quadratic"], ValueError, "scale='quadratic'"),
        (["ckpt_path=/nonexistent/last.ckpt"], FileNotFoundError, "does not exist"),
    ],
)
def test_bad_config_values_are_named(tmp_path: Path, overrides, error, message) -> None:
    """What the app reports (Hydra's instantiation wrapper removed) names the problem."""
    base = [
        o for o in TINY_RUN if o != "data.image_size=8" or "data=fashion_mnist" not in overrides
    ]
    with pytest.raises(Exception) as raised:
        train(compose_run(tmp_path, [*base, *overrides]))
    cause = user_error(raised.value)
    assert isinstance(cause, error), raised.value
    assert re.search(message, str(cause)), str(cause)


def test_foreign_checkpoint_is_rejected(tmp_path: Path) -> None:
    foreign = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a glowlab checkpoint"):
        train(compose_run(tmp_path / "run", [*TINY_RUN, f"ckpt_path={foreign}"]))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable glowlab checkpoint"):
        load_checkpoint(garbage)


def test_unknown_config_group_option_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="(?s)Could not find 'model/waveglow'.*glow_small"):
        compose_run(tmp_path, ["model=waveglow"])


class _PoisonAtStep(L.Callback):
    """Make the model produce NaN from a given step on, as a diverging run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_nonfinite_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    cfg = compose_run(tmp_path, TINY_RUN)
    run = build_run(cfg)
    run.trainer.callbacks.insert(0, _PoisonAtStep(12))
    with pytest.raises(FloatingPointError, match=r"NaN/Inf at step 12.*last\.ckpt.*lr"):
        fit_and_test(cfg, run)
    assert run.trainer.global_step <= 13  # stopped right there, not at the end of training
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_last_checkpoint_holds_the_final_weights_when_training_stops_mid_epoch(
    tmp_path: Path,
) -> None:
    metrics = train(compose_run(tmp_path, [*TINY_RUN, "trainer.max_steps=11", "test=false"]))
    assert metrics["steps"] == 11
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 11


@pytest.mark.slow
def test_optuna_search_and_joblib_launcher_run(tmp_path: Path) -> None:
    """hparams_search=optuna minimises val/bpd; hydra/launcher=joblib runs jobs in parallel."""
    optuna_dir, joblib_dir = tmp_path / "optuna", tmp_path / "joblib"
    result = _run_app(
        [
            *TINY_CLI,
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweep.dir={optuna_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = (optuna_dir / "optimization_results.yaml").read_text()
    assert "best_value" in best and "name: optuna" in best
    assert len(list(optuna_dir.glob("*/metrics.json"))) == 2
    result = _run_app(
        [
            "-m",
            *TINY_CLI,
            "hydra/launcher=joblib",
            "model.depth=1,2",
            f"hydra.sweep.dir={joblib_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(joblib_dir.glob("*/metrics.json"))) == 2


def test_user_config_dir_adds_an_experiment_without_editing_the_package(tmp_path: Path) -> None:
    user_conf = tmp_path / "my_conf" / "experiment"
    user_conf.mkdir(parents=True)
    (user_conf / "mine.yaml").write_text(
        "# @package _global_\ntask_name: mine\nmodel:\n  mask: checkerboard\n"
    )
    cfg = compose_run(
        tmp_path / "run",
        [*TINY_RUN, f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "experiment=mine"],
    )
    assert (cfg.task_name, cfg.model.mask) == ("mine", "checkerboard")


def test_a_run_ended_by_max_time_says_so_and_records_it(tmp_path: Path, capsys) -> None:
    """max_time ends the run before its schedule's steps: metrics.json records stopped_by and
    steps_planned, and one line says the schedule did not anneal; a run that trains its whole
    schedule records max_steps and prints no such line."""
    slow = compose_run(
        tmp_path / "slow",
        [
            *TINY_RUN,
            "trainer.max_steps=100000",
            "trainer.max_epochs=-1",
            "trainer.max_time=00:00:00:03",
            "test=false",
        ],
    )
    metrics = train(slow)
    assert metrics["stopped_by"] == "max_time"
    assert metrics["steps_planned"] == 100000 and 0 < metrics["steps"] < 100000
    saved = json.loads((tmp_path / "slow" / "metrics.json").read_text())
    assert saved["stopped_by"] == "max_time" and saved["steps_planned"] == 100000
    assert f"stopped by max_time after {metrics['steps']} of 100000 planned steps" in (
        capsys.readouterr().out
    )
    done = train(compose_run(tmp_path / "done", [*TINY_RUN, "trainer.max_steps=3", "test=false"]))
    assert done["stopped_by"] == "max_steps" and done["steps_planned"] == 3
    assert "planned steps" not in capsys.readouterr().out


def test_a_schedule_on_the_clock_anneals_by_max_time(tmp_path: Path, capsys) -> None:
    """module.schedule_clock=time: a run that max_time stops long before its planned steps
    still ends its cosine at 0 (the last checkpoint's LR), and its last line says so."""
    overrides = [
        *TINY_RUN,
        "trainer.max_steps=100000",
        "trainer.max_epochs=-1",
        "trainer.max_time=00:00:00:03",
        "test=false",
        "module.schedule_clock=time",
    ]
    metrics = train(compose_run(tmp_path / "clock", overrides))
    assert metrics["stopped_by"] == "max_time" and metrics["steps"] < 100000
    assert metrics["schedule_clock"] == "time"
    last = torch.load(tmp_path / "clock" / "checkpoints" / "last.ckpt", weights_only=False)
    peak = last["lr_schedulers"][0]["base_lrs"][0]
    assert last["lr_schedulers"][0]["_last_lr"][0] < 1e-3 * peak
    assert "the LR schedule followed the clock" in capsys.readouterr().out


def test_a_schedule_on_the_clock_needs_a_time_budget(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, [*TINY_RUN, "module.schedule_clock=time", "test=false"])
    with pytest.raises(ValueError, match="module.schedule_clock=time needs trainer.max_time"):
        train(cfg)
