"""Odd inputs are never silently wrong: 16-bit and float images, small or oblong images,
config values of the wrong type, missing devices, folders given as checkpoints; and the
tools' progress bars."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from glowlab.cli import run_cli
from glowlab.data import ImageDataModule
from glowlab.data.image_folder import UnsupportedModeError
from glowlab.models import glow
from glowlab.tools import score
from glowlab.tools.cli import check_ckpt, check_device
from glowlab.tools.images import read_images
from glowlab.tools.progress import progress_enabled, track
from tests.conftest import compose_run

# 16-bit values whose low byte is not zero, so clipping, rounding or >> 8 all differ
DEEP = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4099 + 17).astype(np.uint16)


def _folder_of(tmp_path: Path, images: dict[str, np.ndarray]) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / name)
    return folder


def _all_train_images(dm: ImageDataModule) -> torch.Tensor:
    dm.setup()
    return torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])


# ----------------------------------------------------------------- 16-bit and float images
@pytest.mark.parametrize("n_bits", [8, 5])
def test_16_bit_training_images_are_scaled_exactly(tmp_path: Path, n_bits: int) -> None:
    folder = _folder_of(tmp_path, {f"{i}.png": DEEP for i in range(3)})
    assert Image.open(folder / "0.png").mode == "I;16"
    dm = ImageDataModule("image_folder", root=str(folder), image_size=4, channels=1,
                         val_size=1, batch_size=1, n_bits=n_bits)  # fmt: skip
    with pytest.warns(UserWarning, match=r"3 of 3 images .* have 16-bit pixels"):
        dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    expected = torch.from_numpy(DEEP.astype(np.int64) >> (16 - n_bits)).to(torch.uint8)
    assert torch.equal(x[0, 0], expected)
    assert int(x.max()) > 2 ** (n_bits - 1)  # not clipped to 255 >> (8 - n_bits)


def test_16_bit_training_images_as_rgb(tmp_path: Path) -> None:
    folder = _folder_of(tmp_path, {f"{i}.png": DEEP for i in range(2)})
    dm = ImageDataModule("image_folder", root=str(folder), image_size=4, channels=3, val_size=0)
    with pytest.warns(UserWarning, match="16-bit"):
        x = _all_train_images(dm)
    expected = torch.from_numpy(DEEP.astype(np.int64) >> 8).to(torch.uint8)
    assert all(torch.equal(x[0, c], expected) for c in range(3))


@pytest.mark.parametrize("n_bits", [8, 3])
def test_16_bit_files_are_scored_exactly(tmp_path: Path, n_bits: int) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(DEEP).save(path)
    with pytest.warns(UserWarning, match=rf"1 image file\(s\) 16-bit, .* \(x >> {16 - n_bits}\)"):
        x = read_images([path], (1, 4, 4), n_bits)
    expected = torch.from_numpy(DEEP.astype(np.int64) >> (16 - n_bits)).to(torch.uint8)
    assert torch.equal(x[0, 0], expected)
    model = glow((1, 4, 4), levels=1, depth=1, n_bits=n_bits).eval()
    with pytest.warns(UserWarning, match="16-bit"):
        bpd = score.score_files(model, [path], samples=1, seed=0)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        direct = model.bits_per_dim(expected.view(1, 1, 4, 4), noise=noise)
    torch.testing.assert_close(bpd, direct.double(), atol=1e-5, rtol=0)


def test_float_images_are_refused_naming_the_mode(tmp_path: Path) -> None:
    folder = _folder_of(tmp_path, {"a.tif": np.zeros((4, 4), np.float32), "b.png": DEEP})
    dm = ImageDataModule("image_folder", root=str(folder), image_size=4, channels=1, val_size=0)
    with pytest.raises(UnsupportedModeError, match=r"1 image file\(s\) .* mode F .*a\.tif"):
        dm.setup()
    with pytest.raises(UnsupportedModeError, match=r"a\.tif is a mode 'F' \(32-bit float\)"):
        read_images([folder / "a.tif"], (1, 4, 4))


# ----------------------------------------------------------------- sizes and shapes
def test_small_and_oblong_training_images_are_counted(tmp_path: Path) -> None:
    images = {"tiny.png": np.full((1, 1), 200, np.uint8), "wide.png": np.zeros((8, 16), np.uint8)}
    images.update({f"ok{i}.png": np.zeros((8, 8), np.uint8) for i in range(3)})
    folder = _folder_of(tmp_path, images)
    dm = ImageDataModule("image_folder", root=str(folder), image_size=8, channels=1, val_size=1)
    with pytest.warns(UserWarning) as caught:
        dm.setup()
    messages = [str(w.message) for w in caught]
    assert any("1 of 5 images" in m and "smaller than 8x8" in m and "tiny.png (1x1)" in m
               for m in messages), messages  # fmt: skip
    assert any("1 of 5 images" in m and "not square" in m and "wide.png (16x8)" in m
               for m in messages), messages  # fmt: skip
    assert not any("ok0.png" in m for m in messages)


def test_small_files_for_scoring_are_counted(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "big.png")
    with pytest.warns(UserWarning) as caught:
        read_images([tmp_path / "small.png", tmp_path / "big.png"], (1, 4, 4))
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 image file(s) smaller than 4x4, upscaled" in messages
    assert "1 image file(s) resized to 4x4 (scaled, center-cropped): big.png (8x8)" in messages


# ----------------------------------------------------------------- config values
def _cli_message(tmp_path: Path, overrides: list[str], config: str = "train") -> str | None:
    """The error line of ``run_cli`` for ``overrides``, or None when the run was reached."""
    cfg = compose_run(tmp_path, overrides, config_name=config)
    try:
        run_cli(f"glowlab-{config}", lambda _: None, cfg)
    except SystemExit as exit_info:
        return str(exit_info.code)
    return None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.depth=abc", "model.depth='abc' is not an integer"),
        ("module.optimizer.lr=abc", "module.optimizer.lr='abc' is not a number"),
        ("trainer.max_steps=abc", "trainer.max_steps='abc' is not an integer"),
        ("data.batch_size=abc", "data.batch_size='abc' is not an integer"),
        ("seed=abc", "seed='abc' is not an integer: seed takes an integer; pass e.g. seed=0"),
        ("test=maybe", "test='maybe' is not true or false"),
    ],
)
def test_text_where_a_number_is_expected_names_the_key(
    tmp_path: Path, override: str, expected: str
) -> None:
    message = _cli_message(tmp_path, [override])
    assert message is not None and message.startswith("glowlab-train: error: ")
    assert expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("config", "override", "expected"),
    [
        ("eval", "samples=abc", "samples='abc' is not an integer"),
        ("sample", "temperatures=hot", "temperatures='hot' is not a list"),
        ("interpolate", "gif=maybe", "gif='maybe' is not true or false"),
        ("interpolate", "gif=maybe", "pass e.g. gif=false"),
    ],
)
def test_text_in_tool_options_names_the_key(
    tmp_path: Path, config: str, override: str, expected: str
) -> None:
    message = _cli_message(tmp_path, ["ckpt=x.ckpt", override], config)
    assert message is not None and expected in message


@pytest.mark.parametrize(
    "override",
    ["trainer.devices=auto", "trainer.precision=bf16-mixed", "data.root=/x", "model=nice_small"],
)
def test_text_where_text_is_allowed_passes(tmp_path: Path, override: str) -> None:
    assert _cli_message(tmp_path, [override]) is None


# ----------------------------------------------------------------- devices and checkpoints
def test_cuda_without_cuda_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available on this machine; use device=cpu"):
        check_device("cuda")
    with pytest.raises(ValueError, match="'tpu' is not a device"):
        check_device("tpu")
    assert check_device("auto") == "auto" and check_device("cpu") == "cpu"


def test_a_folder_as_checkpoint_names_a_file_inside(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a folder, not a file; .*last\.ckpt"):
        check_ckpt(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .ckpt file"):
        check_ckpt(tmp_path / "empty")
    assert check_ckpt(tmp_path / "missing.ckpt") == str(tmp_path / "missing.ckpt")


# ----------------------------------------------------------------- progress bars
def test_progress_draws_on_a_terminal_only_when_enabled() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    assert list(track(range(3), "bits per dim", True, console=terminal)) == [0, 1, 2]
    drawn = terminal.file.getvalue()
    assert "bits per dim" in drawn and "3/3" in drawn
    quiet = Console(file=io.StringIO(), force_terminal=True)
    assert list(track(range(3), "bits per dim", False, console=quiet)) == [0, 1, 2]
    assert quiet.file.getvalue() == ""
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert not progress_enabled(True, pipe)
    assert list(track(iter("ab"), "x", True, console=pipe)) == ["a", "b"]
    with pytest.raises(ValueError, match="progress='yes' must be true or false"):
        progress_enabled("yes")


def test_type_error_in_a_changed_node_names_the_overrides(tmp_path: Path) -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    def build(cfg) -> None:
        instantiate(cfg.model, image_shape=[1, 8, 8], n_bits=8)

    cfg = compose_run(tmp_path, ["model.conditioner.hidden=[1]"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli("glowlab-train", build, cfg)
    message = str(exit_info.value.code)  # the range check (glowlab.options) comes first
    assert message == "glowlab-train: error: model.conditioner.hidden=[1] must be an integer >= 1"
    cfg = compose_run(tmp_path, [])  # no override under model: a bug, the traceback stays

    def buggy(cfg) -> None:  # a TypeError from code, not from the user's config
        instantiate(cfg.model, image_shape=None, n_bits=8)

    with pytest.raises(InstantiationException) as info:
        run_cli("glowlab-train", buggy, cfg)
    assert isinstance(info.value.__cause__, TypeError)
