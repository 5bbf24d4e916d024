"""FID/KID where they run: ``glowlab-eval metrics=[...,fid,kid]`` on a checkpoint and the
training callback ``callbacks/fid=on`` (val/ and test/ keys in metrics.json, TensorBoard, the
HParams table and the last line), which leaves the training itself unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glowlab.cli import run_cli
from glowlab.tools import evaluate
from glowlab.train import train
from tests.conftest import TINY_RUN, compose_run

KEY = "fid_synthetic_classifier"  # data=synthetic has 3 classes: a classifier is trained on it


def _run(run_dir: Path, cache: Path, *extra: str) -> dict:
    overrides = [*TINY_RUN, "logger=tensorboard", f"paths.cache_dir={cache}", *extra]
    return train(compose_run(run_dir, overrides))


def test_the_fid_callback_reports_beside_bpd_and_leaves_training_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    plain = _run(tmp_path / "plain", cache)
    capsys.readouterr()
    fid = _run(
        tmp_path / "fid",
        cache,
        "callbacks/fid=on",
        "callbacks.fid.metrics=[fid,kid]",
        "callbacks.fid.n=64",
    )
    last_lines = capsys.readouterr().out

    # the same training: sampling for FID runs under a forked RNG
    for key in ("val/bpd", "test/bpd", "train/bpd"):
        assert fid[key] == plain[key], key
    # two validations (one per epoch) and the test each logged FID and KID
    kid = KEY.replace("fid", "kid")
    for stage in ("val", "test"):
        assert 0 <= fid[f"{stage}/{KEY}"] < 1e4
        assert fid[f"{stage}/{kid}"] is not None
    assert fid["test/bpd"] is not None and KEY not in plain["metric_directions"]
    assert fid["metric_directions"][KEY] == "lower"
    assert (
        json.loads((tmp_path / "fid" / "metrics.json").read_text())[f"test/{KEY}"]
        == (fid[f"test/{KEY}"])
    )
    assert f"test/{KEY} {fid[f'test/{KEY}']:.4f}" in last_lines

    [logdir] = {p.parent for p in (tmp_path / "fid" / "tensorboard").rglob("events.out.*")}
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    assert len(accumulator.Scalars(f"val/{KEY}")) == 2
    assert {f"test/{KEY}", f"hp/test_{KEY}", f"hp/val_{kid}"} <= set(accumulator.Tags()["scalars"])
    assert list(cache.glob("features/synthetic_classifier-*.pt"))  # trained once, cached


def test_eval_gives_fid_and_kid_of_samples_at_a_temperature(tiny_run: Path, tmp_path: Path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    common = [f"ckpt={ckpt}", f"paths.cache_dir={tmp_path / 'cache'}", "fid.n=48"]
    cfg = compose_run(tmp_path / "eval", [*common, "metrics=[fid,kid]", "temperature=0.7"], "eval")
    report = evaluate.run(cfg)
    kid = KEY.replace("fid", "kid")
    assert report["metrics"] == [KEY, kid]
    assert report[KEY] > 0 and f"{kid}_std" in report
    assert report["temperature"] == 0.7 and report["sampling_images_per_s"] > 0
    assert "n=48 samples (T=0.7" in report[f"{kid}_note"]  # kid follows fid.n
    # no likelihood metric: no pass over the split, no reconstruction check
    assert "recon_max_abs" not in report and "images" not in report
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())[KEY] == report[KEY]

    # at T=1 the samples differ, and with bpd the split is read as before
    cfg = compose_run(tmp_path / "eval1", [*common, "metrics=[bpd,fid]", "max_images=16"], "eval")
    again = evaluate.run(cfg)
    assert again[KEY] != report[KEY] and again["images"] == 16 and "recon_max_abs" in again


def test_an_unknown_metric_option_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    cfg = compose_run(tmp_path / "eval", [f"ckpt={ckpt}", "metrics=[fid]", "+fid.nn=4"], "eval")
    with pytest.raises(SystemExit) as stop:
        run_cli("glowlab-eval", evaluate.run, cfg)
    message = str(stop.value.code)
    assert message.startswith("glowlab-eval: error: fid.nn is not an option of metric 'fid'")
    assert "\n" not in message
