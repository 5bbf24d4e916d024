"""Prepared datasets: one uncompressed uint8 ``.npy`` per split, memory-mapped by every rank.

A source that is one array per split (`Source.preparable`: MNIST, Fashion-MNIST, CIFAR-10,
ImageNet 32/64) is decoded once into ``<cache_dir>/<name>-<C>x<H>x<W>-<root hash>/``::

    pool_images.npy  uint8 (N, C, H, W)     pool_labels.npy  int64 (N,)
    test_images.npy  uint8 (M, C, H, W)     test_labels.npy  int64 (M,)
    manifest.json    written last: its presence marks a complete cache

Every file is written to a temporary name and moved into place with ``os.replace``, under a
file lock, so a reader never sees half a file and two writers never interleave. Every rank
then opens the arrays with ``np.load(mmap_mode="r")`` and reads its batches from the OS page
cache, which all ranks of a node share (`MappedImageDataset`), so a rank's private memory does
not grow with the dataset.

The manifest records the layout version, the glowlab version (for provenance), the image shape,
the number of classes, every array's shape, dtype and file size, and each source file with its
size and a cheap checksum: SHA-256 of its first and last MiB (catches replaced, truncated or
re-downloaded files in milliseconds, not an in-place edit in the middle of a same-size file;
modification times are not compared, so copying data and cache together keeps the cache).
A cache whose manifest is missing, unreadable, of another layout version or source list, or
whose arrays do not match it (a partial or truncated write) is rebuilt, or refused in one line
when its folder cannot be written. A complete cache whose source files are all absent (only
the cache was copied to a node) is used as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch.utils.data import Dataset

import glowlab
from glowlab.data.sources import SOURCES, DatasetNotFoundError, RawData, Request
from glowlab.outputs import check_writable

LAYOUT_VERSION = 1  # bump when the files or their meaning change: older caches are rebuilt
MANIFEST = "manifest.json"
SPLITS = ("pool", "test")
CHECKSUM = "sha256 of the first and last MiB"
_CHUNK = 1 << 20
WAIT_SECONDS = 3600.0  # how long a rank waits for another process to finish the cache


class CacheError(ValueError):
    """A prepared cache cannot be used or written; the message names the option that fixes it."""


@dataclass(frozen=True)
class CacheInfo:
    """A complete prepared cache: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if f"{s}_images" in self.manifest["arrays"])


class MappedImageDataset(Dataset):
    """Images ``uint8 (N, C, H, W)`` and labels ``long (N,)`` of a prepared ``.npy`` pair.

    The images file is opened with ``np.load(mmap_mode="r")`` (header, shape, offset) and its
    images are read with ``os.preadv`` straight into the batch: the bytes come from the OS page
    cache, which every rank on the node shares, and no page is mapped into the process, so a
    rank's private memory stays at its batch buffers. (Fancy-indexing the map instead maps
    each touched image's neighbours too, by the kernel's fault-around and read-ahead: a rank's
    USS grew by 1.07 GB over 40 random batches of 256 ImageNet 64 images.) Labels are a small
    map. The files are opened lazily in each process, so a pickled copy sent to a loader
    worker reopens them. ``__getitems__`` reads a batch in file order and returns
    ``(uint8 (B, C, H, W), long (B,))`` in the order asked for: the values
    `TensorImageDataset` gives for the same indices.
    """

    def __init__(self, images: Path, labels: Path) -> None:
        self.images_path, self.labels_path = Path(images), Path(labels)
        header = np.load(self.images_path, mmap_mode="r")
        self.shape, self._offset = tuple(header.shape[1:]), header.offset
        self._item_bytes = int(np.prod(self.shape))
        self._len = len(header)
        self._fd: int | None = None
        self._labels: np.ndarray | None = None

    def _open(self) -> tuple[int, np.ndarray]:
        if self._fd is None or self._labels is None:
            self._fd = os.open(self.images_path, os.O_RDONLY)
            self._labels = np.load(self.labels_path, mmap_mode="r")
        return self._fd, self._labels

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_labels": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def __len__(self) -> int:
        return self._len

    def _read(self, fd: int, index: int, out: np.ndarray) -> None:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} is out of range for {self._len} images")
        read = os.preadv(fd, [out], self._offset + index * self._item_bytes)
        if read != self._item_bytes:
            raise CacheError(f"{self.images_path} is truncated; prepare it again")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        fd, labels = self._open()
        image = np.empty(self.shape, dtype=np.uint8)
        self._read(fd, int(index), image.reshape(-1))
        return torch.from_numpy(image), torch.tensor(int(labels[index]))

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        fd, labels = self._open()
        index = np.asarray(indices, dtype=np.int64)
        batch = np.empty((len(index), self._item_bytes), dtype=np.uint8)
        for k in np.argsort(index, kind="stable"):
            self._read(fd, int(index[k]), batch[k])
        images = torch.from_numpy(batch).view(len(index), *self.shape)
        return images, torch.from_numpy(labels[index].astype(np.int64))


# ----------------------------------------------------------------------------- locations


def cache_path(cache_dir: Path, name: str, req: Request) -> Path:
    """``<cache_dir>/<name>-<C>x<H>x<W>-<8 hex of the resolved root>``: one folder per dataset,
    image format and data location, so two roots of one dataset never overwrite each other."""
    root_key = hashlib.sha256(str(req.root.expanduser().resolve()).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{name}-{req.channels}x{req.image_size}x{req.image_size}-{root_key}"


def fingerprint(path: Path) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of a source file; the hash covers its first and last
    MiB (the whole file when smaller than 2 MiB)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(_CHUNK))
        if size > _CHUNK:
            f.seek(max(size - _CHUNK, _CHUNK))
            digest.update(f.read(_CHUNK))
    return {"path": str(path.resolve()), "bytes": size, "sha256": digest.hexdigest()}


def source_fingerprints(name: str, req: Request) -> list[dict[str, Any]] | None:
    """Fingerprints of the files ``name`` reads, or ``None`` when none of them is there (and
    ``req.download`` is off): only a copied cache can then be used."""
    files = SOURCES[name].files
    if files is None:
        raise CacheError(f"{name} cannot be prepared; use data.format=raw")
    try:
        return [fingerprint(p) for p in files(req)]
    except DatasetNotFoundError:
        return None


# ----------------------------------------------------------------------------- checking


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest in cache folder ``path``, or ``None`` if absent or unreadable."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def problem(
    path: Path, name: str, shape: Sequence[int], sources: list[dict[str, Any]] | None
) -> str | None:
    """Why the cache in ``path`` cannot be used for ``name`` at ``shape`` read from
    ``sources`` (``None``: sources absent, not compared), or ``None`` when it can."""
    manifest = read_manifest(path)
    if manifest is None:
        begun = path.is_dir() and any(path.glob("*.npy"))
        return "partial (no complete manifest)" if begun else "not prepared yet"
    if manifest.get("layout") != LAYOUT_VERSION:
        return f"layout version {manifest.get('layout')} (this glowlab writes {LAYOUT_VERSION})"
    if manifest.get("dataset") != name or list(manifest.get("shape", [])) != list(shape):
        return f"it holds {manifest.get('dataset')} {manifest.get('shape')}"
    if sources is not None and manifest.get("sources") != sources:
        changed = [s["path"] for s in sources if s not in manifest.get("sources", [])]
        return f"source files changed since it was prepared ({', '.join(changed) or 'the list'})"
    try:
        for key, spec in manifest["arrays"].items():
            file = path / f"{key}.npy"
            if file.stat().st_size != spec["file_bytes"]:
                return f"{file.name} has {file.stat().st_size} bytes, not {spec['file_bytes']}"
            array = np.load(file, mmap_mode="r")
            if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
                return f"{file.name} holds {array.dtype} {array.shape}, not the manifest's"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable ({err})"
    return None


# ----------------------------------------------------------------------------- writing


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; moved onto ``path`` (``os.replace``) when the
    block ends without an error, deleted otherwise."""
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, np.ascontiguousarray(array))
        f.flush()
        os.fsync(f.fileno())
    return {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "file_bytes": path.stat().st_size,
    }


def clear_for_writing(path: Path) -> None:
    """Remove the manifest (the cache is incomplete from now on) and the temporary files that
    writers on this host which are no longer running left. Call it holding the cache's lock."""
    (path / MANIFEST).unlink(missing_ok=True)
    host = socket.gethostname()
    for leftover in path.glob(f".*.{host}.*.tmp"):
        pid = leftover.name.rsplit(".", 2)[1]
        if pid.isdigit() and not _running(int(pid)):
            leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileArrays:
    """`Request.allocate` for preparing: each array a loader assembles is created as the
    cache's temporary ``.npy`` (``np.lib.format.open_memmap``), filled in place and later
    moved into the cache, so the dataset never has to fit in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, tuple[np.memmap, Path]] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        tmp = _temporary(self.path / f"{name}.npy")
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        self.files[name] = (array, tmp)
        return array

    def store(self, name: str, array: np.ndarray) -> dict[str, Any]:
        """Move ``name`` into the cache if ``array`` is the file made for it; else save a copy.
        Returns the manifest's entry for it."""
        target = self.path / f"{name}.npy"
        made = self.files.pop(name, None)
        if made is None or not np.shares_memory(made[0], array):
            if made is not None:
                made[1].unlink(missing_ok=True)
            return _write_array(target, array)
        mapped, tmp = made
        mapped.flush()
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        del mapped
        os.replace(tmp, target)
        spec = {"shape": list(array.shape), "dtype": str(array.dtype)}
        return {**spec, "file_bytes": target.stat().st_size}

    def discard(self) -> None:
        """Delete the temporary files not stored (a failed load)."""
        for _, tmp in self.files.values():
            tmp.unlink(missing_ok=True)
        self.files.clear()


def write_cache(
    path: Path,
    name: str,
    raw: RawData,
    sources: list[dict[str, Any]],
    files: FileArrays | None = None,
) -> None:
    """Write ``raw`` (its pool and test split, each a `TensorImageDataset`) into ``path``,
    moving arrays the loader built in ``files`` instead of copying them; the manifest last.
    Call it holding the cache's lock, after `clear_for_writing`."""
    files = files or FileArrays(path)
    arrays: dict[str, Any] = {}
    for split, dataset in zip(SPLITS, (raw.pool, raw.test), strict=True):
        if dataset is None:
            continue
        arrays[f"{split}_images"] = files.store(f"{split}_images", dataset.images.numpy())
        arrays[f"{split}_labels"] = files.store(f"{split}_labels", dataset.labels.numpy())
    shape = list(raw.pool.images.shape[1:])
    manifest = {
        "layout": LAYOUT_VERSION,
        "glowlab": glowlab.__version__,
        "dataset": name,
        "shape": shape,
        "num_classes": raw.num_classes,
        "checksum": CHECKSUM,
        "sources": sources,
        "arrays": arrays,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "writer": f"{socket.gethostname()}:{os.getpid()}",
    }
    with atomic_path(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


# ----------------------------------------------------------------------------- entry points


FIX = "set data.cache_dir=<a writable folder> (or data.format=raw to read the files directly)"


def build_once(
    path: Path, check: Callable[[], str | None], build: Callable[[str], None], fix: str
) -> None:
    """Run ``build(reason)`` unless ``check()`` finds ``path`` usable (returns ``None``).

    Holds ``<path>.lock`` while checking again and building, so concurrent callers (ranks,
    nodes sharing a filesystem) wait for one writer and then find its result complete.
    ``OutputWriteError`` naming ``fix`` when ``path`` cannot be written."""
    reason = check()
    if reason is None:
        return
    check_writable([path], f"the cache there is {reason}; {fix}")
    with FileLock(f"{path}.lock"):
        reason = check()
        if reason is not None:
            build(reason)


def wait_until(
    path: Path, check: Callable[[], str | None], what: str, timeout: float = WAIT_SECONDS
) -> None:
    """Wait (on ``<path>.lock``, then polling) until ``check()`` finds ``path`` usable, written
    by another process (local rank 0's ``prepare_data``); `CacheError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (reason := check()) is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CacheError(
                f"{what} in {path} is still {reason} after {timeout:.0f} s of waiting for local "
                "rank 0 to write it; run glowlab-prepare first, or give every rank the same "
                "data.cache_dir"
            )
        with (
            contextlib.suppress(Timeout),
            FileLock(f"{path}.lock").acquire(timeout=min(remaining, 1.0)),
        ):
            pass
        time.sleep(min(0.5, remaining))


def _checker(name: str, req: Request, path: Path) -> Callable[[], str | None]:
    shape = (req.channels, req.image_size, req.image_size)
    return lambda: problem(path, name, shape, source_fingerprints(name, req))


def prepare(
    name: str, req: Request, cache_dir: Path, log: Callable[[str], None] = print
) -> CacheInfo:
    """Prepare ``name`` into ``cache_dir`` unless a usable cache is there (`build_once`);
    return it. Raises `DatasetNotFoundError` when neither a cache nor the data is there."""
    path = cache_path(cache_dir, name, req)

    def build(reason: str) -> None:
        sources = source_fingerprints(name, req)
        if sources is None:
            SOURCES[name].files(req)  # raises DatasetNotFoundError saying how to get the data
        if reason != "not prepared yet":
            log(f"rebuilding the prepared {name} in {path}: {reason}")
        started = time.perf_counter()
        clear_for_writing(path)
        files = FileArrays(path)
        try:
            raw = SOURCES[name].load(dataclasses.replace(req, allocate=files))
            write_cache(path, name, raw, sources, files)
        finally:
            files.discard()
        log(f"prepared {name} in {path} ({time.perf_counter() - started:.1f} s)")

    check = _checker(name, req, path)
    if check() is not None and source_fingerprints(name, req) is None:
        SOURCES[name].files(req)  # no cache and no data: say so before making any folder
    build_once(path, check, build, FIX)
    return CacheInfo(path, read_manifest(path))


def wait_for(name: str, req: Request, cache_dir: Path, timeout: float = WAIT_SECONDS) -> CacheInfo:
    """The cache that another process prepares (`wait_until`), once complete."""
    path = cache_path(cache_dir, name, req)
    wait_until(path, _checker(name, req, path), f"the prepared {name}", timeout)
    return CacheInfo(path, read_manifest(path))


def open_cache(info: CacheInfo) -> RawData:
    """The splits of a complete cache as `MappedImageDataset`s."""

    def split(name: str) -> MappedImageDataset:
        return MappedImageDataset(
            info.path / f"{name}_images.npy", info.path / f"{name}_labels.npy"
        )

    test = split("test") if "test" in info.splits else None
    return RawData(pool=split("pool"), test=test, num_classes=info.num_classes)
