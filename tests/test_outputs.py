"""The one write guard (glowlab/outputs.py): atomic writes, one-line failures, and the run
directory checked before Hydra writes into it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image as torchvision_save_image

import glowlab.outputs as outputs
from glowlab.cli import user_error
from glowlab.tools.sample import save_sample_figures


def _enospc(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_keeps_the_old_file_and_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = outputs.write_text(tmp_path / "metrics.json", "old\n", what="metrics")
    monkeypatch.setattr(outputs.os, "fsync", _enospc)
    with pytest.raises(outputs.OutputWriteError) as raised:
        outputs.write_text(target, "new\n", what="metrics")
    monkeypatch.undo()
    assert str(raised.value) == (
        f"could not write metrics {target} (the disk is full); "
        "free space or fix permissions, or write elsewhere"
    )
    assert user_error(raised.value) is raised.value  # the apps print it as one error line
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_folder_in_place_of_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(outputs.OutputWriteError, match="a part of the path is a file"):
        outputs.write_text(tmp_path / "plain" / "out.json", "{}")


def test_saved_images_equal_torchvision_s(tmp_path: Path) -> None:
    grid = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(0))
    outputs.save_image(grid, tmp_path / "ours.png")
    torchvision_save_image(grid, tmp_path / "theirs.png")
    ours, theirs = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("ours", "theirs"))
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize(
    ("app", "args"),
    [
        ("glowlab.train", ["trainer.max_steps=1"]),
        ("glowlab.train", ["-m", "trainer.max_steps=1"]),
        ("glowlab.tools.sample", ["ckpt=/nonexistent.ckpt"]),
    ],
    ids=["train", "train-sweep", "sample"],
)
def test_an_unwritable_run_dir_is_one_line_before_hydra_writes(
    tmp_path: Path, app: str, args: list[str]
) -> None:
    """The run (or sweep) dir lies below a file: one line naming the dir and the option,
    exit status 1, no traceback, nothing created."""
    blocker = tmp_path / "plain"
    blocker.write_text("x")
    key = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
    result = subprocess.run(
        [sys.executable, "-m", app, *args, f"{key}={blocker / 'run'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"output directory {blocker / 'run'} is not writable" in lines[0]
    assert f"{key}=<dir>" in lines[0]


def test_a_tool_on_a_full_disk_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """glowlab-sample's figures (the grids and the labelled temperature rows) go through the
    guard: a full disk is one OutputWriteError naming the file, and no partial file is left."""
    grids = {1.0: torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)}
    assert [p.name for p in save_sample_figures(grids, 8, tmp_path)] == [
        "samples_T1.png",
        "temperatures.png",
    ]
    monkeypatch.setattr(outputs.os, "fsync", _enospc)
    with pytest.raises(outputs.OutputWriteError, match=r"samples_T1.png \(the disk is full\)"):
        save_sample_figures(grids, 8, tmp_path)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))


class _FullAfter:
    """A binary file that takes ``room`` bytes, then fails every write with ENOSPC."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_a_checkpoint_on_a_disk_that_fills_during_torch_save_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save raises a RuntimeError (its zip writer) while handling the ENOSPC of a write:
    still one OutputWriteError saying the disk is full, and the old file kept."""
    target = tmp_path / "last.ckpt"
    outputs.write_atomic(target, lambda f: torch.save({"w": torch.zeros(4)}, f), "checkpoint")
    real_open = open
    monkeypatch.setattr(
        outputs, "open", lambda path, mode: _FullAfter(real_open(path, mode), 1000), raising=False
    )
    big = {"w": torch.zeros(100_000)}
    with pytest.raises(outputs.OutputWriteError, match=r"last.ckpt \(the disk is full\)"):
        outputs.write_atomic(target, lambda f: torch.save(big, f), "checkpoint")
    monkeypatch.undo()
    assert torch.equal(torch.load(target)["w"], torch.zeros(4))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_bug_in_a_writer_keeps_its_traceback(tmp_path: Path) -> None:
    def broken(file) -> None:
        raise KeyError("not a disk problem")

    with pytest.raises(KeyError):
        outputs.write_atomic(tmp_path / "x.bin", broken)
    assert not list(tmp_path.iterdir())
