"""The research tools on the tiny trained checkpoint: results, files, wiring and errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glowlab.models import glow
from glowlab.tools import evaluate, interpolate, manipulate, sample, score
from glowlab.tools.images import image_files, read_images
from glowlab.tools.loading import build_datamodule, images_at, load_flow, split_dataset
from tests.conftest import compose_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def flow(ckpt: Path):
    """The tiny model (eval mode, CPU), its run config and its test split."""
    model, config = load_flow(ckpt)
    return model, config, split_dataset(build_datamodule(config), "test")


def _app(tool, out: Path, overrides: list[str], config_name: str) -> dict:
    """Run a tool's Hydra ``main`` on a config composed like the command line would."""
    return tool.main(compose_run(out, overrides, config_name=config_name))


def _error(tool, out: Path, overrides: list[str], config_name: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _app(tool, out, overrides, config_name)
    return str(exit_info.value.code)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


# ------------------------------------------------------------------ evaluate
def test_eval_bpd_equals_bits_per_dim_averaged_over_the_split(flow) -> None:
    model, config, _ = flow
    datamodule = build_datamodule(config)
    result = evaluate.evaluate(model, datamodule, "test", samples=2, seed=7)
    expected = []
    with torch.no_grad():
        for i, (x, _) in enumerate(datamodule.test_dataloader()):
            gen = torch.Generator().manual_seed(7 + i)
            draws = [
                model.bits_per_dim(x, noise=torch.rand(x.shape, generator=gen)) for _ in range(2)
            ]
            expected.append(torch.stack(draws).mean(0))
    expected = torch.cat(expected).double()
    assert result["images"] == len(expected) == 25
    torch.testing.assert_close(result["per_image_bpd"], expected, atol=1e-5, rtol=0)
    assert result["bpd"] == pytest.approx(expected.mean().item(), abs=1e-5)
    assert result["bound"] == "uniform dequantization bound"
    assert "no variational dequantizer" in result["bound_note"]
    assert result["importance_weighted_bpd"] is None
    assert result["recon_pixel_errors"] == 0 and result["recon_max_abs"] < 1e-4


def test_eval_app_reproduces_the_runs_test_bpd(tiny_run: Path, tmp_path: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    args = [f"ckpt={metrics['test_checkpoint']}", "samples=1", "seed=1234"]
    _app(evaluate, tmp_path, args, "eval")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["bpd"] == pytest.approx(metrics["test/bpd"], abs=1e-5)
    assert report["bound"] == "uniform dequantization bound"
    with (tmp_path / "per_image_bpd.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 25 and set(rows[0]) == {"index", "label", "bpd"}
    assert _png(tmp_path / "bpd_histogram.png").shape == (400, 640, 3)


# ------------------------------------------------------------------ sample
def test_sample_grids_are_seeded_and_share_noise_across_temperatures(flow) -> None:
    model = flow[0]
    first = sample.sample_grids(model, n=6, temperatures=[0, 0.5], seed=3)
    again = sample.sample_grids(model, n=6, temperatures=[0, 0.5], seed=3)
    other = sample.sample_grids(model, n=6, temperatures=[0.5], seed=4)
    assert list(first) == [0.0, 0.5] and first[0.5].shape == (6, 1, 8, 8)
    assert first[0.5].dtype == torch.uint8
    assert all(torch.equal(first[t], again[t]) for t in first)
    assert not torch.equal(first[0.5], other[0.5])
    assert torch.equal(first[0][0], first[0][5])  # temperature 0: every sample is the mode


def test_sample_console_run_writes_grids_identical_to_in_process(ckpt, tmp_path: Path) -> None:
    args = [f"ckpt={ckpt}", "n=9", "temperatures=[0.5,1.0]", "seed=5", "device=cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "glowlab.tools.sample", *args, f"hydra.run.dir={tmp_path / 'cli'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "glowlab-sample:" in done.stdout
    _app(sample, tmp_path / "here", args, "sample")
    for name in ("samples_T0.5.png", "samples_T1.png", "temperatures.png"):
        np.testing.assert_array_equal(
            _png(tmp_path / "cli" / name), _png(tmp_path / "here" / name)
        )
    assert _png(tmp_path / "cli" / "samples_T1.png").shape[:2] == (32, 32)  # 3 x (8 + 2) + 2
    assert _png(tmp_path / "cli" / "temperatures.png").shape[0] == 2 * 40 + 2 * 4  # 2 rows


def test_class_conditional_sampling_y_all_gives_a_row_per_class() -> None:
    model = glow((1, 4, 4), levels=1, depth=1, width=4, num_classes=3).eval()
    labels = sample.sample_labels(model, 2, "all")
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert sample.sample_labels(model, 4, None).tolist() == [0, 1, 2, 0]
    assert sample.sample_grids(model, n=2, temperatures=[1.0], y="all")[1.0].shape == (6, 1, 4, 4)
    with pytest.raises(ValueError, match=r"y=3 must be a class index in 0..2 or y=all"):
        sample.sample_labels(model, 2, 3)
    with pytest.raises(ValueError, match="not class-conditional; drop y"):
        sample.sample_labels(glow((1, 4, 4), levels=1, depth=1, width=4), 2, 1)


# ------------------------------------------------------------------ interpolate
@pytest.mark.parametrize("mode", ["linear", "slerp"])
def test_interpolation_ends_are_the_input_images(flow, mode: str) -> None:
    model, _, test_set = flow
    x, _ = images_at(test_set, [3, 17], 8, "a")
    frames = interpolate.interpolate(model, x[0], x[1], steps=5, mode=mode)
    assert frames.shape == (5, 1, 8, 8) and frames.dtype == torch.uint8
    assert torch.equal(frames[0], x[0]) and torch.equal(frames[-1], x[1])
    assert not torch.equal(frames[2], x[0])


def test_interpolate_app_from_a_file_and_an_index(flow, ckpt, tmp_path: Path) -> None:
    x, _ = images_at(flow[2], [3], 8, "a")
    Image.fromarray(x[0, 0].numpy()).save(tmp_path / "a.png")
    args = [f"ckpt={ckpt}", f"a={tmp_path / 'a.png'}", "b=17", "steps=4", "gif=true"]
    summary = _app(interpolate, tmp_path, args, "interpolate")
    assert summary["endpoints_exact"]
    assert _png(tmp_path / "interpolation.png").shape[:2] == (12, 42)  # 4 frames of 8 + 2
    with Image.open(tmp_path / "interpolation.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (128, 128)  # there and back, enlarged


# ------------------------------------------------------------------ manipulate
def test_manipulation_at_alpha_zero_returns_the_input(flow) -> None:
    model, config, test_set = flow
    loader = [images_at(test_set, list(range(25)), 8, "indices")]
    direction = manipulate.attribute_direction(model, loader, class_a=1, class_b=0)
    assert [tuple(d.shape) for d in direction] == model.latent_shapes
    x, _ = images_at(test_set, [0, 5], 8, "indices")
    out = manipulate.manipulate(model, x, direction, alphas=[-1.0, 0.0, 1.0])
    assert out.shape == (2, 3, 1, 8, 8)
    assert torch.equal(out[:, 1], x)
    assert not torch.equal(out[:, 2], x)


def test_manipulate_app_writes_a_grid(ckpt, tmp_path: Path) -> None:
    args = [f"ckpt={ckpt}", "class_a=1", "class_b=0", "indices=[0,1]", "alphas=[-1,0,1]"]
    summary = _app(manipulate, tmp_path, args, "manipulate")
    assert summary["alphas"] == [-1.0, 0.0, 1.0] and len(summary["direction_norms"]) == 2
    assert _png(tmp_path / "manipulation.png").shape[0] == 2 * 40 + 2 * 4 + 20  # header row


# ------------------------------------------------------------------ score
def test_score_app_flags_noise_images_against_the_test_split(ckpt, tmp_path: Path) -> None:
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "rgb.png")
    args = [f"ckpt={ckpt}", f"inputs={folder}", "reference=test", "train_images=32"]
    with pytest.warns(UserWarning) as caught:
        summary = _app(score, tmp_path / "out", args, "score")
    messages = " ".join(str(w.message) for w in caught)
    assert "1 image file(s) converted to L: rgb.png (RGB)" in messages
    assert "1 image file(s) resized to 8x8" in messages
    assert summary["n_inputs"] == 7 and summary["n_reference"] == 25
    assert summary["train_images"] == 32
    assert summary["auroc_bpd"] > 0.9  # uniform noise is far less likely than the blobs
    assert 0 <= summary["auroc_typicality"] <= 1
    with (tmp_path / "out" / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["set"] for r in rows].count("reference") == 25
    assert float(rows[0]["typicality"]) >= 0
    assert (tmp_path / "out" / "bpd_histogram.png").is_file()


# ------------------------------------------------------------------ data and images
def test_data_overrides_and_a_data_of_another_shape(ckpt, tmp_path: Path) -> None:
    model, config = load_flow(ckpt)
    assert build_datamodule(config, {"train_subset": 64, "root": None}).train_subset == 64
    with pytest.raises(ValueError, match=r"shape \(1, 28, 28\) but the model takes \(1, 8, 8\)"):
        build_datamodule(
            config, {"_target_": "glowlab.data.ImageDataModule", "name": "mnist"}, model
        )
    message = _error(evaluate, tmp_path, [f"ckpt={ckpt}", "data=mnist"], "eval")
    assert message.startswith("glowlab-eval: error: data 'mnist' has images of shape")


def test_read_images_errors_name_the_file_or_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="inputs=.*empty holds no image files"):
        image_files(tmp_path / "empty")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image file .*bad\.png"):
        read_images([tmp_path / "bad.png"], (1, 8, 8))
    with pytest.raises(FileNotFoundError, match="inputs=.*missing does not exist"):
        image_files(tmp_path / "missing")


# ------------------------------------------------------------------ errors in the apps
def test_bad_inputs_exit_with_one_clear_line(ckpt, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    (tmp_path / "empty").mkdir()
    cases = [
        (evaluate, "eval", ["ckpt=nope.ckpt"], "glowlab-eval: error: checkpoint nope.ckpt does"),
        (evaluate, "eval", [f"ckpt={foreign}"], "is not a glowlab checkpoint"),
        (evaluate, "eval", [], "glowlab-eval: error: ckpt is required; pass ckpt=<value>"),
        (evaluate, "eval", [f"ckpt={ckpt}", "split=dev"], "split='dev' is not supported"),
        (sample, "sample", [f"ckpt={ckpt}", "temperatures=[0.5,-1]"], "each a finite number >= 0"),
        (sample, "sample", [f"ckpt={ckpt}", "y=2"], "not class-conditional; drop y"),
        (sample, "sample", [f"ckpt={ckpt}", "inversion=jacobi"], "no sampling option 'inversion"),
        (interpolate, "interpolate", [f"ckpt={ckpt}", "a=3", "b=99"], "b: index 99 is out of"),
        (interpolate, "interpolate", [f"ckpt={ckpt}", "a=3"], "give both a and b"),
        (interpolate, "interpolate", [f"ckpt={ckpt}", "steps=1"], "steps=1 must be"),
        (manipulate, "manipulate", [f"ckpt={ckpt}", "class_a=1"], "class_b is required"),
        (
            manipulate,
            "manipulate",
            [f"ckpt={ckpt}", "class_a=1", "class_b=0", "indices=[0,25]"],
            "indices: index 25 is out of range for a split of 25 images; use 0..24",
        ),
        (
            manipulate,
            "manipulate",
            [f"ckpt={ckpt}", "class_a=9", "class_b=0"],
            "class_a=9: no image of class 9",
        ),
        (score, "score", [f"ckpt={ckpt}", f"inputs={tmp_path / 'empty'}"], "holds no image files"),
        (score, "score", [f"ckpt={ckpt}", "inputs=test", "max_images=0"], "max_images=0 must be"),
        (evaluate, "eval", [f"ckpt={ckpt.parent}"], "is a folder, not a file"),
        (evaluate, "eval", [f"ckpt={ckpt}", "samples=abc"], "samples='abc' is not an integer"),
        (evaluate, "eval", [f"ckpt={ckpt}", "device=tpu"], "device='tpu' is not a device"),
        (sample, "sample", [f"ckpt={ckpt}", "n=0"], "n=0 must be an integer >= 1"),
        (
            manipulate,
            "manipulate",
            [f"ckpt={ckpt}", "class_a=1", "class_b=0", "indices=[]"],
            "indices=[] must be a non-empty list",
        ),
    ]
    for tool, name, args, expected in cases:
        message = _error(tool, tmp_path / "out", args, name)
        assert expected in message, (args, message)
        assert message.startswith(f"glowlab-{name}: error: ")
        assert "\n" not in message
