"""Prepared datasets (memory-mapped arrays, litdata chunks): the same batches as the raw
reader, stale or partial caches rebuilt or refused in one line, one writer per node, exact
resume, and ``glowlab-prepare``'s bad inputs."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from glowlab.data import cache
from glowlab.data.datamodule import ImageDataModule
from glowlab.data.sources import DatasetNotFoundError
from glowlab.outputs import OutputWriteError
from glowlab.tools.prepare import prepare
from glowlab.training.checkpoints import load_checkpoint
from glowlab.training.data_order import resumable_loader
from tests.fixtures import IDX_NAMES, make_cifar10, make_idx_set, make_imagenet, write_idx
from tests.test_resume import (
    STEPS,
    _assert_bit_equal,
    _fit,
    _interrupted,
    _SignalAtStep,
    _state,
)

SMALL = {"batch_size": 8, "val_size": 16, "hflip": True, "seed": 3}


def _module(name: str, root: Path, fmt: str, cache_dir: Path | None, **kw) -> ImageDataModule:
    cache_arg = None if cache_dir is None else str(cache_dir)
    return ImageDataModule(
        name, root=str(root), format=fmt, cache_dir=cache_arg, **{**SMALL, **kw}
    )


def _batches(dm: ImageDataModule, n_train: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_train`` train batches (glowlab's resumable order, random flips from the
    global seed), then the first val and test batch."""
    dm.setup()
    torch.manual_seed(7)
    train = resumable_loader(dm.train_dataloader(), dm.seed, 1, 0)
    out = [batch for _, batch in zip(range(n_train), train, strict=False)]
    return [*out, next(iter(dm.val_dataloader())), next(iter(dm.test_dataloader()))]


def _assert_same(expected: list, got: list) -> None:
    assert len(expected) == len(got)
    for (x1, y1), (x2, y2) in zip(expected, got, strict=True):
        assert x1.dtype == x2.dtype == torch.uint8 and torch.equal(x1, x2)
        assert y1.dtype == y2.dtype == torch.long and torch.equal(y1, y2)


def _make(name: str, root: Path) -> None:
    if name == "mnist":
        make_idx_set(root, n_train=120, n_test=30)
    elif name == "cifar10":
        make_cifar10(root)
    else:
        make_imagenet(root, size=32)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagenet32"])
def test_memmap_gives_the_raw_batches(tmp_path: Path, name: str) -> None:
    root = tmp_path / "data"
    _make(name, root)
    raw = _batches(_module(name, root, "raw", None))
    mapped = _module(name, root, "memmap", tmp_path / "cache")
    _assert_same(raw, _batches(mapped))
    assert isinstance(mapped.train_set.dataset, cache.MappedImageDataset)
    manifest = cache.read_manifest(cache.cache_path(mapped.cache_dir, name, mapped.request()))
    assert manifest["glowlab"] and manifest["checksum"] == cache.CHECKSUM
    assert all(s["bytes"] > 0 and len(s["sha256"]) == 64 for s in manifest["sources"])
    assert mapped.num_classes == (1000 if name == "imagenet32" else 10)


def test_mapped_dataset_batches_match_items_in_any_order(tmp_path: Path) -> None:
    """``__getitems__`` (sorted reads) returns the asked order; pickling does not copy data."""
    root = tmp_path / "data"
    make_idx_set(root, n_train=50, n_test=10)
    info = cache.prepare("mnist", _module("mnist", root, "memmap", None).request(), tmp_path)
    dataset = cache.open_cache(info).pool
    indices = [17, 3, 49, 3, 0]
    x, y = dataset.__getitems__(indices)
    assert torch.equal(x, torch.stack([dataset[i][0] for i in indices]))
    assert torch.equal(y, torch.stack([dataset[i][1] for i in indices]))
    assert len(pickle.dumps(dataset)) < 1000


def test_litdata_gives_the_raw_batches(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_idx_set(root, n_train=120, n_test=30)
    raw = _batches(_module("mnist", root, "raw", None))
    streamed = _module("mnist", root, "litdata", tmp_path / "cache")
    streamed.prepare_data()
    _assert_same(raw, _batches(streamed))
    path = cache.cache_path(streamed.cache_dir, "mnist", streamed.request())
    assert (path / "litdata" / "pool" / "index.json").is_file()


# ----------------------------------------------------------------------------- stale caches


def _prepared(tmp_path: Path) -> tuple[ImageDataModule, Path]:
    root = tmp_path / "data"
    make_idx_set(root, n_train=60, n_test=10)
    dm = _module("mnist", root, "memmap", tmp_path / "cache")
    info = cache.prepare("mnist", dm.request(), dm.cache_dir, lambda _: None)
    return dm, info.path


def _prepare_logged(dm: ImageDataModule) -> list[str]:
    lines: list[str] = []
    cache.prepare("mnist", dm.request(), dm.cache_dir, lines.append)
    return lines


def _truncate(path: Path) -> None:
    file = path / "pool_images.npy"
    file.write_bytes(file.read_bytes()[:-100])


def _bump_layout(path: Path) -> None:
    manifest = json.loads((path / cache.MANIFEST).read_text())
    manifest["layout"] = 0
    (path / cache.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "pool_images.npy has"),
        (lambda p: (p / cache.MANIFEST).unlink(), "partial (no complete manifest)"),
        (lambda p: (p / cache.MANIFEST).write_text("{not json"), "partial"),
        (_bump_layout, "layout version 0"),
        (lambda p: (p / "test_labels.npy").write_bytes(b"garbage"), "test_labels.npy has"),
    ],
    ids=["truncated-array", "no-manifest", "corrupt-manifest", "old-layout", "corrupt-labels"],
)
def test_a_damaged_cache_is_rebuilt(tmp_path: Path, damage, reason: str) -> None:
    dm, path = _prepared(tmp_path)
    expected = _batches(_module("mnist", dm.root, "raw", None))
    damage(path)
    lines = _prepare_logged(dm)
    assert reason in lines[0] and "rebuilding" in lines[0]
    assert _prepare_logged(dm) == []  # complete again: nothing to do
    _assert_same(expected, _batches(_module("mnist", dm.root, "memmap", tmp_path / "cache")))


@pytest.mark.parametrize(("name", "copied"), [("imagenet32", 0), ("mnist", 4)])
def test_imagenet_is_assembled_in_the_cache_files(
    tmp_path: Path, monkeypatch, name: str, copied: int
) -> None:
    """ImageNet's arrays are filled in place in the cache's files (never the whole dataset in
    memory); small sources are loaded, then saved: the same bytes either way."""
    root = tmp_path / "data"
    _make(name, root)
    saved: list[str] = []
    write = cache._write_array
    monkeypatch.setattr(cache, "_write_array", lambda p, a: saved.append(p.name) or write(p, a))
    dm = _module(name, root, "memmap", tmp_path / "cache")
    info = cache.prepare(name, dm.request(), dm.cache_dir, lambda _: None)
    assert len(saved) == copied
    raw = _module(name, root, "raw", None).source.load(dm.request())
    assert np.array_equal(np.load(info.path / "pool_images.npy"), raw.pool.images.numpy())
    assert np.array_equal(np.load(info.path / "test_labels.npy"), raw.test.labels.numpy())
    assert not list(info.path.glob(".*.tmp"))


def test_a_dead_writers_temporary_files_are_removed(tmp_path: Path) -> None:
    dm, path = _prepared(tmp_path)
    host = socket.gethostname()
    dead = path / f".pool_images.npy.{host}.999999999.tmp"
    live = path / f".pool_images.npy.{host}.{os.getppid()}.tmp"  # a running process
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    (path / cache.MANIFEST).unlink()
    assert "rebuilding" in _prepare_logged(dm)[0]
    assert not dead.exists() and live.exists()


def test_changed_source_files_make_the_cache_stale(tmp_path: Path) -> None:
    dm, path = _prepared(tmp_path)
    old = np.load(path / "pool_images.npy")
    arrays = make_idx_set(dm.root, n_train=60, n_test=10)  # same sizes, other images
    write_idx(dm.root / IDX_NAMES["train_images"], 255 - arrays["train_images"])
    lines = _prepare_logged(dm)
    assert "source files changed" in lines[0] and "train-images-idx3-ubyte.gz" in lines[0]
    new = np.load(path / "pool_images.npy")
    assert np.array_equal(new[:, 0], 255 - arrays["train_images"]) and not np.array_equal(old, new)


def test_a_cache_that_cannot_be_written_is_refused_in_one_line(tmp_path: Path) -> None:
    """A cache is needed but its folder cannot be created (below a file: chmod would not stop
    root); a stale cache there takes the same path (`build_once` checks before rewriting)."""
    root = tmp_path / "data"
    make_idx_set(root, n_train=60, n_test=10)
    (tmp_path / "afile").write_text("")
    dm = _module("mnist", root, "memmap", tmp_path / "afile" / "cache")
    with pytest.raises(OutputWriteError) as refused:
        dm.setup()
    message = str(refused.value)
    assert "\n" not in message and "set data.cache_dir=" in message and "not prepared" in message
    assert "is not writable (a part of the path is a file, not a folder)" in message


def test_a_copied_cache_without_its_sources_is_used(tmp_path: Path) -> None:
    dm, _ = _prepared(tmp_path)
    expected = _batches(_module("mnist", dm.root, "memmap", tmp_path / "cache"))
    shutil.rmtree(dm.root)
    _assert_same(expected, _batches(_module("mnist", dm.root, "memmap", tmp_path / "cache")))
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(DatasetNotFoundError, match="MNIST not found"):
        _module("mnist", dm.root, "memmap", tmp_path / "cache").setup()


def test_cache_goes_beside_the_data_or_to_the_fallback(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_idx_set(root, n_train=60, n_test=10)
    beside = ImageDataModule("mnist", root=str(root), format="memmap", cache_fallback="/x")
    assert beside.cache_dir == root / "prepared"
    (tmp_path / "afile").write_text("")  # a root below a file: nothing can be created there
    unwritable = tmp_path / "afile" / "data"
    fallback = ImageDataModule(
        "mnist", root=str(unwritable), format="memmap", cache_fallback=str(tmp_path / "f")
    )
    assert fallback.cache_dir == tmp_path / "f"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"format": "zarr"}, "set data.format to raw, memmap, litdata"),
        ({"format": "memmap", "name": "synthetic"}, "synthetic is read file by file"),
        ({"stream_dir": "s3://b/x"}, "only with data.format=litdata"),
    ],
)
def test_bad_format_options_are_one_line(options: dict, match: str) -> None:
    kwargs = {"name": "mnist", "root": "/nowhere", **options}
    with pytest.raises(ValueError, match=match) as error:
        ImageDataModule(**kwargs)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- one writer


def _prepare_in_process(root: str, cache_dir: str, start: float, out: str) -> None:
    time.sleep(max(0.0, start - time.time()))
    dm = ImageDataModule("mnist", root=root, format="memmap", cache_dir=cache_dir)
    info = cache.prepare("mnist", dm.request(), dm.cache_dir, lambda _: None)
    Path(out).write_text(info.manifest["writer"])


def test_two_processes_preparing_at_once_write_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_idx_set(root, n_train=2000, n_test=100)
    context = multiprocessing.get_context("fork")
    start = time.time() + 1.0
    procs = [
        context.Process(
            target=_prepare_in_process,
            args=(str(root), str(tmp_path / "cache"), start, str(tmp_path / f"seen{i}")),
        )
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    writers = {(tmp_path / f"seen{i}").read_text() for i in range(2)}
    assert len(writers) == 1  # both saw the one manifest, written by one of them
    assert writers.pop().split(":")[1] in {str(proc.pid) for proc in procs}


class _Trainer:
    def __init__(self, local_rank: int) -> None:
        self.local_rank = local_rank


def test_other_ranks_wait_for_local_rank_zero_and_never_write(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_idx_set(root, n_train=60, n_test=10)
    leader = _module("mnist", root, "memmap", tmp_path / "cache")
    follower = _module("mnist", root, "memmap", tmp_path / "cache")
    follower.trainer = _Trainer(local_rank=1)
    path = cache.cache_path(leader.cache_dir, "mnist", leader.request())
    path.parent.mkdir(parents=True)
    lock = FileLock(f"{path}.lock")
    lock.acquire()  # local rank 0 is writing
    waiter = threading.Thread(target=follower.setup)
    waiter.start()
    time.sleep(1.5)
    assert waiter.is_alive() and not path.exists()  # waiting, not writing
    lock.release()
    leader.prepare_data()
    waiter.join(30)
    assert not waiter.is_alive() and len(follower.train_set) == 44
    assert cache.read_manifest(path)["writer"].endswith(f":{os.getpid()}")


def test_a_rank_gives_up_waiting_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_idx_set(root, n_train=60, n_test=10)
    req = _module("mnist", root, "memmap", None).request()
    with pytest.raises(cache.CacheError, match="after 1 s of waiting for local rank 0") as err:
        cache.wait_for("mnist", req, tmp_path / "cache", timeout=1.0)
    assert "\n" not in str(err.value) and "glowlab-prepare" in str(err.value)


# ----------------------------------------------------------------------------- exact resume


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory) -> Path:
    """A 200-image Fashion-MNIST-layout IDX set shared by the resume runs."""
    root = tmp_path_factory.mktemp("fmnist")
    make_idx_set(root, n_train=200, n_test=40)
    return root


@pytest.mark.parametrize("fmt", ["memmap", "litdata"])
def test_interrupted_and_resumed_equals_straight(tmp_path: Path, small_fmnist: Path, fmt) -> None:
    """SIGTERM during step 8 of 14 (mid-epoch 2), resume from last.ckpt: every tensor equal to
    the straight run, with the prepared reader (one cache shared by the three runs)."""
    overrides = [
        *STEPS,
        f"data.root={small_fmnist}",
        f"data.format={fmt}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.hflip=true",
    ]
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    _fit(straight, overrides)
    assert _interrupted(first, overrides, _SignalAtStep(7, signal.SIGTERM)) == 143
    last = first / "checkpoints" / "last.ckpt"
    assert 0 < load_checkpoint(last)["global_step"] < 14
    _fit(resumed, [*overrides, f"ckpt_path={last}"])
    _assert_bit_equal(_state(straight), _state(resumed))


# ----------------------------------------------------------------------------- glowlab-prepare


def test_prepare_writes_a_cache_that_training_maps(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_idx_set(root, n_train=60, n_test=10)
    dm = _module("mnist", root, "memmap", tmp_path / "cache")
    summary = prepare(dm)
    assert summary["images"] == {"pool": 60, "test": 10} and summary["cache_bytes"] > 60 * 784
    again = prepare(dm, force=True)
    assert again["cache"] == summary["cache"]
    assert _prepare_logged(dm) == []


PREPARE = str(Path(sys.executable).with_name("glowlab-prepare"))


MISSING_ROOT = "/nowhere/glowlab-test-data"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data=synthetic"], "synthetic is read file by file"),
        (["data=cifar10", f"data.root={MISSING_ROOT}"], "CIFAR-10 not found"),
        (["data=mnist", "data.format=raw"], "nothing to prepare"),
        (["data=mnist", "data.format=parquet"], "set data.format to raw, memmap, litdata"),
        (["data=mnist", "num_workers=0"], "num_workers=0 must be an integer >= 1"),
    ],
)
def test_glowlab_prepare_bad_input_is_one_line(tmp_path: Path, args, expected: str) -> None:
    if f"data.root={MISSING_ROOT}" not in args and args[0] != "data=synthetic":
        make_idx_set(tmp_path / "mnist", n_train=20, n_test=5)
        args = [*args, f"data.root={tmp_path / 'mnist'}"]
    done = subprocess.run(
        [PREPARE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glowlab-prepare: error: "), done.stderr
    assert expected in lines[0]
    assert not Path(MISSING_ROOT).exists()  # no cache folder made for data that is not there
