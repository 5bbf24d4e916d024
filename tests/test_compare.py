"""``glowlab-compare``: a real tiny comparison (two entries and one that fails), the report
with sample metrics, the training clock, and bad inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from glowlab.tools import compare
from tests.conftest import FASHION_MNIST, compose_run

TINY = ["data.train_subset=256", "data.eval_batch_size=50"]
GLOW = ["experiment=fmnist_glow_cpu", *TINY, "model.depth=1", "model.conditioner.hidden=8"]
TARFLOW = ["experiment=fmnist_tarflow_cpu", *TINY, "model.blocks=1", "model.block.layers=1"]


def _overrides(values: list[str]) -> str:
    return "[" + ",".join(f'"{v}"' for v in values) + "]"


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


@pytest.mark.slow
def test_compare_trains_for_the_budget_reports_and_marks_the_failed_entry(tmp_path: Path):
    """Two tiny families for 3 s each, two at a time, and an entry whose training refuses its
    config: the others finish (FID of their samples included, with a small feature
    classifier), the failure is one line naming the entry and its log, the table marks it, and
    the command exits 1."""
    if not FASHION_MNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    budget, validations = 3.0, 2
    command = [
        sys.executable,
        "-m",
        "glowlab.tools.compare",
        f"budget={budget}",
        "probe_steps=8",
        f"validations={validations}",
        "val_batches=1",
        "sample_metrics=[fid]",
        "temperatures=[1.0]",
        "sample_images=32",
        "eval_overrides="
        + _overrides(
            [f"paths.cache_dir={tmp_path / 'cache'}", "+fid.classifier_images=500"]
            + ["+fid.classifier_epochs=1"]
        ),
        "grid_n=4",
        "parallel=2",
        "entries=[glow,tarflow,broken]",
        f"+presets.glow.train={_overrides([*GLOW, 'module.init_batch_size=64'])}",
        f"+presets.tarflow={{train:{_overrides(TARFLOW)},test_images:20}}",
        f"+presets.broken={_overrides(['experiment=fmnist_glow_cpu', 'model.depth=0'])}",
        f"hydra.run.dir={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    broken = [line for line in done.stderr.splitlines() if "broken" in line]
    assert len(broken) == 2, done.stderr  # the entry's failure, then the summary
    assert "broken: probe exited 1 (glowlab-train: error: model.depth=0" in broken[0]
    assert str(tmp_path / "broken" / "probe.log") in broken[0]
    assert broken[1].startswith("glowlab-compare: 1 of 3 entries failed (broken)")

    summary = json.loads((tmp_path / "compare.json").read_text())
    rows = {row["name"]: row for row in summary["entries"]}
    assert list(rows) == ["glow", "tarflow", "broken"]
    assert rows["broken"]["failed"].startswith("probe exited 1") and "test" not in rows["broken"]
    for row in (rows["glow"], rows["tarflow"]):
        assert row["failed"] is None and row["probe_s_per_step"] > 0
        assert row["steps_planned"] % validations == 0
        assert row["steps"] == row["steps_planned"] or row["stopped_by_budget"]
        assert 0 < row["train_s"] < budget + 1.0  # the clock stops within a step of the budget
        curve = row["curve"]
        assert row["curve_key"] == "val/bpd" and len(curve) == validations
        assert [p["train_s"] for p in curve] == sorted(p["train_s"] for p in curve)
        assert curve[-1]["step"] == row["steps"] and all(math.isfinite(p["value"]) for p in curve)
        assert math.isfinite(row["test"]["value"]) and row["test"]["sem"] > 0
        assert row["grid"]["images_per_s"] > 0 and row["parameters"] > 0
        assert row["sample_keys"] == ["fid_fashion_mnist_classifier"]
        assert row["samples"]["1"]["fid_fashion_mnist_classifier"] > 0
    assert rows["glow"]["test"]["images"] == 51 and not rows["glow"]["test"]["subset"]
    assert rows["tarflow"]["test"]["images"] == 20 and rows["tarflow"]["test"]["subset"]

    markdown = (tmp_path / "compare.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert all(line in done.stdout.splitlines() for line in table)  # printed too
    assert len(table) == 3 and "(all 51)" in table[0] and "(first 20)" in table[1]
    assert "failed: probe exited 1" in table[2] and "broken/probe.log" in table[2]
    assert "fid_fashion_mnist_classifier T=1" in markdown
    assert summary["plots"] == ["bpd_vs_time.png", "fid_vs_temperature.png", "samples.png"]
    assert _valid_png(tmp_path / "bpd_vs_time.png") == (640, 400)
    assert _valid_png(tmp_path / "fid_vs_temperature.png") == (640, 400)
    assert _valid_png(tmp_path / "samples.png")[0] > 2 * 2 * 28 * 2  # two 2x2 grids, doubled


def _settings(**changes) -> compare.Settings:
    values = dict(
        budget=10.0,
        probe_steps=8,
        validations=2,
        temperatures=[0.5, 0.7, 1.0],
        sample_metrics=["fid", "kid"],
        sample_images=100,
        eval_overrides=[],
        grid_n=4,
        grid_temperature=1.0,
        seed=0,
        parallel=1,
        threads=1,
    )
    return compare.Settings(**{**values, **changes})


def _row(name: str, fids: dict[str, float]) -> dict:
    """A finished entry as `compare_entry` fills it, its sample metrics keyed as eval.json
    keys them (a feature network's name in the key)."""
    fid, kid = "fid_fmnist_net", "kid_fmnist_net"
    samples = {
        t: {fid: v, kid: v / 1000, f"{kid}_std": 1e-4, "sampling_images_per_s": 50.0 + v}
        for t, v in fids.items()
    }
    return {
        "name": name,
        "train": [],
        "failed": None,
        "steps": 90,
        "steps_planned": 100,
        "train_s": 10.2,
        "parameters": 1234,
        "curve_key": "val/bpd",
        "curve": [
            {"step": 50, "train_s": 5.1, "value": 4.0},
            {"step": 90, "train_s": 10.2, "value": 3.5},
        ],
        "test": {"key": "bpd", "value": 3.5, "sem": 0.01, "images": 10000, "subset": False},
        "sample_keys": [fid, kid],
        "samples": samples,
    }


def test_report_names_the_feature_network_and_finds_the_best_temperature(tmp_path: Path):
    rows = [_row("glow", {"0.5": 40.0, "0.7": 30.0, "1": 35.0}), _row("fm", {"1": 20.0})]
    markdown = compare.report(rows, _settings(), tmp_path)
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| entry"))
    assert "fid_fmnist_net T=1 | kid_fmnist_net T=1 | fid_fmnist_net best T" in header
    glow = next(line for line in lines if line.startswith("| `glow`"))
    cells = [cell.strip() for cell in glow.split("|")[1:-1]]
    assert cells[1] == "3.5000 ± 0.0100 (all 10,000)"
    assert cells[2:7] == ["35", "0.035 (sd 0.0001)", "30", "0.03 (sd 0.0001)", "0.7"]
    assert cells[7:] == ["85.0", "1,234", "90 of 100 (budget spent)", "10 s", ""]
    assert compare.best_temperature(rows[1]) == "1"
    assert (
        json.loads((tmp_path / "compare.json").read_text())["entries"][0]["samples"]
        == (rows[0]["samples"])
    )
    assert _valid_png(tmp_path / "fid_vs_temperature.png") == (640, 400)
    assert _valid_png(tmp_path / "bpd_vs_time.png") == (640, 400)


def test_train_clock_counts_training_only_and_stops_at_the_budget(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(compare.time, "perf_counter", lambda: now[0])
    clock = compare.TrainClock(str(tmp_path / "clock.json"), budget_s=3.0, warm_steps=1)
    trainer = SimpleNamespace(
        global_step=0,
        should_stop=False,
        sanity_checking=False,
        is_global_zero=True,
        callback_metrics={"val/bpd": torch.tensor(4.5), "train/bpd": torch.tensor(5.0)},
    )
    for step in range(1, 5):
        clock.on_train_batch_start(trainer)
        now[0] += 1.0  # a second per step
        trainer.global_step = step
        clock.on_train_batch_end(trainer)
        if step == 2:
            clock.on_validation_start(trainer)
            now[0] += 50.0  # validation and checkpoints: not training
            clock.on_validation_end(trainer)
        if trainer.should_stop:
            break
    clock.on_train_end(trainer)
    written = json.loads((tmp_path / "clock.json").read_text())
    assert trainer.should_stop and written["steps"] == 3 and written["stopped_by_budget"]
    assert written["train_s"] == 3.0 and (written["warm_step"], written["warm_train_s"]) == (1, 1)
    assert written["validations"] == [{"step": 2, "train_s": 2.0, "val/bpd": 4.5}]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["entries=[glow_cpu,glwo_cpu]"],
            "entries: 'glwo_cpu' is not a preset; did you mean glow",
        ),
        (["budget=0"], "budget=0 must be a finite number > 0; e.g. budget=360"),
        (["budget=-5"], "budget=-5 must be a finite number > 0"),
        (["entries=[]"], "entries=[] names no preset"),
        (["entries=[fm,fm]"], "entries: 'fm' is named twice"),
        (["probe_steps=2"], "probe_steps=2 must be an integer >= 4"),
        (["+presets.fm.test_imgs=5"], "presets.fm.test_imgs is not an entry option; did you mean"),
        (["+presets.x=5", "entries=[x]"], "presets.x=5 must be a node with train: ["),
        (["+presets.x.train=[]", "entries=[x]"], "presets.x.train is empty"),
        (["sample_metrics=[1]"], "sample_metrics=[1] must be a list of strings"),
    ],
)
def test_bad_input_is_one_line_before_any_run(tmp_path: Path, overrides, expected) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.main(compose_run(tmp_path, overrides, config_name="compare"))
    message = str(exit_info.value.code)
    assert message.startswith(f"glowlab-compare: error: {expected}"), message
    assert "\n" not in message and not any(tmp_path.iterdir())  # nothing ran


def test_every_default_entry_composes_as_a_training_run(tmp_path: Path) -> None:
    """The shipped presets, with the overrides compare adds, are valid glowlab-train configs
    (numbers in range), with the clock among the callbacks and the entry's validation size."""
    from glowlab.options import check_options

    cfg = compose_run(tmp_path, [], config_name="compare")
    s = compare.settings(cfg)
    for entry in compare.chosen_entries(cfg):
        args = compare._train_args(entry, s, tmp_path, 100, entry.val_batches, s.budget)
        train = compose_run(tmp_path, args)
        check_options(train)
        assert train.callbacks.train_clock.budget_s == s.budget == 360
        assert (train.trainer.max_steps, train.trainer.val_check_interval) == (100, 25)
        assert train.trainer.limit_val_batches == entry.val_batches and train.test is False
    assert [e.name for e in compare.chosen_entries(cfg)] == list(cfg.presets)
