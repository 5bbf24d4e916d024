"""Image folders and path inputs: colour-mode conversions are counted in one warning in
training as in glowlab-score; a folder where a file is expected (checkpoint, image) and a file
where a folder is expected (data.root) are named as such, with the path to pass."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glowlab.data import ImageDataModule
from glowlab.data.image_folder import mode_conversion, scan_files, scan_image_folder
from glowlab.data.sources import DatasetNotFoundError
from glowlab.tools.images import image_files, read_images
from glowlab.tools.loading import load_flow
from glowlab.training.checkpoints import load_checkpoint


def _png(path: Path, mode: str, seed: int = 0, size: int = 8) -> Path:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, channels), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """12 RGB, 4 grey (L) and 1 RGBA PNG, in two class folders."""
    root = tmp_path / "mixed"
    for i in range(12):
        _png(root / "a" / f"rgb{i:02d}.png", "RGB", i)
    for i in range(4):
        _png(root / "b" / f"grey{i}.png", "L", 100 + i)
    _png(root / "b" / "alpha.png", "RGBA", 200)
    return root


def _infos(root: Path, mode: str):
    return scan_files(scan_image_folder(root)[0], mode, 8)


def test_conversion_to_rgb_counts_each_source_mode(mixed: Path) -> None:
    sentence, names = mode_conversion(_infos(mixed, "RGB"), "RGB")
    assert sentence == "are converted to RGB (4 from L, 1 from RGBA; transparency dropped)"
    assert sorted(Path(n.split(" ")[0]).name for n in names) == [
        "alpha.png",
        "grey0.png",
        "grey1.png",
        "grey2.png",
        "grey3.png",
    ]
    assert all(n.endswith(("(L)", "(RGBA)")) for n in names)


def test_conversion_to_grey_says_the_colour_is_lost(mixed: Path) -> None:
    sentence, names = mode_conversion(_infos(mixed, "L"), "L")
    assert sentence.startswith("are converted to L (12 from RGB, 1 from RGBA;")
    assert "their colour is lost; data.channels=3 keeps it" in sentence
    assert len(names) == 13


def test_an_all_grey_folder_read_as_rgb_suggests_one_channel(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"g{i}.png", "L", i)
    sentence, _ = mode_conversion(_infos(tmp_path, "RGB"), "RGB")
    assert "every image is grey: data.channels=1" in sentence


def test_nothing_converted_nothing_said(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"c{i}.png", "RGB", i)
    assert mode_conversion(_infos(tmp_path, "RGB"), "RGB") == ("", [])


def _setup_warnings(root: Path, channels: int) -> list[str]:
    data = ImageDataModule("image_folder", str(root), image_size=8, channels=channels, val_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize(("channels", "expected"), [(3, "5 of 17"), (1, "13 of 17")])
def test_training_data_warns_once_with_the_count(mixed: Path, channels, expected) -> None:
    mode = "RGB" if channels == 3 else "L"
    converted = [m for m in _setup_warnings(mixed, channels) if f"converted to {mode}" in m]
    assert len(converted) == 1
    assert converted[0].startswith(f"{expected} images under {mixed} are converted to {mode}")


def test_training_and_score_both_warn_about_the_same_files(mixed: Path) -> None:
    """glowlab-score's reader converts the same files, and says so."""
    with pytest.warns(UserWarning, match=r"5 image file\(s\) converted to RGB"):
        x = read_images(image_files(mixed), (3, 8, 8))
    assert x.shape == (17, 3, 8, 8)


def test_a_checkpoint_folder_names_the_file_to_pass(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch000-step000008-bpd7.6552.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    expected = f"checkpoint {run} is a folder, not a file; pass the .ckpt file (e.g. {run}"
    for load in (load_checkpoint, load_flow):
        with pytest.raises(ValueError) as raised:
            load(run)
        assert str(raised.value) == f"{expected}/checkpoints/last.ckpt)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is a folder, not a file; .*holds no \.ckpt"):
        load_checkpoint(tmp_path / "empty")


def test_a_missing_checkpoint_still_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_an_image_folder_where_one_image_is_expected(mixed: Path) -> None:
    with pytest.raises(ValueError) as raised:
        read_images([mixed], (3, 8, 8))
    assert str(raised.value) == (
        f"{mixed} is a folder, not an image file; pass one image file (e.g. {mixed}/a/rgb00.png)"
    )
    with pytest.raises(FileNotFoundError, match="image file .* does not exist"):
        read_images([mixed / "nope.png"], (3, 8, 8))


def test_score_inputs_take_a_file_or_a_folder(mixed: Path) -> None:
    one = mixed / "b" / "grey0.png"
    assert image_files(one) == [one]
    assert len(image_files(mixed)) == 17  # recursive
    with pytest.raises(FileNotFoundError, match=r"inputs=.*nope does not exist; pass an image"):
        image_files(mixed / "nope")


def test_a_file_as_the_image_folder_root(mixed: Path) -> None:
    data = ImageDataModule("image_folder", str(mixed / "a" / "rgb00.png"), image_size=8)
    with pytest.raises(DatasetNotFoundError, match=r"rgb00.png is a file, not a folder; set data"):
        data.setup()


def test_train_with_a_run_folder_as_ckpt_path_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    script = Path(sys.executable).parent / "glowlab-train"
    args = ["data=synthetic", f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'out'}"]
    result = subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"glowlab-train: error: checkpoint {run} is a folder, not a file; pass the .ckpt file "
        f"(e.g. {run}/checkpoints/last.ckpt)"
    ]
