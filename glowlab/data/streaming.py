"""litdata chunks of a prepared dataset, for object stores (``s3://``, ``gs://``) or local disks.

`write_litdata` converts a prepared cache (`glowlab.data.cache`) with ``litdata.optimize``
into ``<dir>/pool`` and ``<dir>/test``; each item is ``{"index": i, "image": uint8 (C, H, W),
"label": y}``, in the cache's order. `StreamingImageDataset` reads them with
``litdata.StreamingDataset`` by index (random access), so glowlab's own resumable sampler
(`glowlab.training.data_order`) decides the order: the batches are those of the raw and memory-
mapped readers, and a mid-epoch resume is exact for the same reason. (litdata's
``StreamingDataLoader`` shuffles chunk by chunk in its own order, which would give other batches
than the raw reader for the same seed.) Remote chunks are downloaded on first use into a local
folder, which litdata keeps under its default budget (75 % of the free disk) by evicting chunks;
random access touches every chunk each epoch, so give that folder room for the whole dataset.

A local directory gets a ``manifest.json`` (the cache's manifest plus the chunk layout), written
last, so a partial or stale conversion is detected and redone like a partial cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from glowlab.data.cache import (
    MANIFEST,
    WAIT_SECONDS,
    CacheError,
    CacheInfo,
    atomic_path,
    build_once,
    read_manifest,
    wait_until,
)
from glowlab.data.sources import RawData

REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "azure://", "hf://", "r2://")
CHUNK_BYTES = "64MB"
BLOCK = 4096  # items per optimize input (one call of the item function)
# optimize's workers only read memory maps and write files (no CUDA, no torch), so they fork:
# seconds faster per call than spawning fresh interpreters (litdata's default)
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is an object-store URL rather than a local path."""
    return str(location).startswith(REMOTE_PREFIXES)


class _CacheItems:
    """``litdata.optimize``'s item function: yields the items ``start..stop-1`` of one split of
    a prepared cache (picklable: workers reopen the memory maps)."""

    def __init__(self, images: Path, labels: Path) -> None:
        self.images, self.labels = images, labels

    def __call__(self, block: tuple[int, int]) -> Iterator[dict[str, Any]]:
        images = np.load(self.images, mmap_mode="r")
        labels = np.load(self.labels, mmap_mode="r")
        for i in range(*block):
            yield {"index": i, "image": np.array(images[i]), "label": int(labels[i])}


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Restore the global random generators (Python, NumPy, torch CPU and initialised CUDA)
    after the block: ``litdata.optimize`` seeds them in the calling process, which would
    change a training run's initialisation and flips depending on whether it converted."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _quiet_litdata() -> None:
    """Silence litdata's progress and tip messages (logged, not warned) for glowlab's runs."""
    logging.getLogger("litdata").setLevel(logging.ERROR)


def litdata_problem(location: Path, info: CacheInfo) -> str | None:
    """Why the local litdata conversion in ``location`` does not match the cache ``info``
    (``None``: it does)."""
    manifest = read_manifest(location)
    if manifest is None:
        begun = location.is_dir() and any(location.glob("*/index.json"))
        return "partial (no complete manifest)" if begun else "not converted yet"
    if manifest.get("cache") != info.manifest:
        return "it was converted from another prepared cache"
    missing = [s for s in info.splits if not (location / s / "index.json").is_file()]
    return f"{', '.join(missing)}/index.json missing" if missing else None


def write_litdata(
    info: CacheInfo, location: str | Path, num_workers: int = 1, log: Callable[[str], None] = print
) -> None:
    """Convert the prepared cache ``info`` into litdata chunks at ``location`` (a folder or an
    object-store URL), one sub-folder per split, with ``num_workers`` processes."""
    import litdata

    _quiet_litdata()
    remote = is_remote(location)
    if not remote:
        location = Path(location)
        location.mkdir(parents=True, exist_ok=True)
        (location / MANIFEST).unlink(missing_ok=True)
    for split in info.splits:
        n = info.manifest["arrays"][f"{split}_labels"]["shape"][0]
        blocks = [(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK)]
        items = _CacheItems(info.path / f"{split}_images.npy", info.path / f"{split}_labels.npy")
        with warnings.catch_warnings(), _random_state_kept():
            warnings.filterwarnings("ignore", module="litdata")
            litdata.optimize(
                fn=items,
                inputs=blocks,
                output_dir=f"{str(location).rstrip('/')}/{split}",
                chunk_bytes=CHUNK_BYTES,
                num_workers=max(1, min(num_workers, len(blocks))),
                keep_data_ordered=True,
                reorder_files=False,
                mode="overwrite",
                verbose=False,
                start_method=START_METHOD,
            )
    if not remote:
        manifest = {"cache": info.manifest, "chunk_bytes": CHUNK_BYTES, "splits": info.splits}
        with atomic_path(location / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote litdata chunks of {info.manifest['dataset']} to {location}")


LITDATA_FIX = "set data.stream_dir=<a writable folder or bucket URL> (or data.format=memmap)"


def prepare_litdata(
    info: CacheInfo, location: Path, num_workers: int = 1, log: Callable[[str], None] = print
) -> None:
    """Convert the cache ``info`` into the local folder ``location`` unless a matching
    conversion is there (`build_once`: one writer, others wait on its lock)."""

    def build(reason: str) -> None:
        if reason != "not converted yet":
            log(f"converting {info.manifest['dataset']} to litdata again in {location}: {reason}")
        write_litdata(info, location, num_workers, log)

    build_once(location, lambda: litdata_problem(location, info), build, LITDATA_FIX)


def wait_for_litdata(info: CacheInfo, location: Path, timeout: float = WAIT_SECONDS) -> None:
    """Wait until another process has converted ``info`` into ``location`` (`wait_until`)."""
    check = lambda: litdata_problem(location, info)  # noqa: E731
    wait_until(location, check, "the litdata conversion", timeout)


class StreamingImageDataset(Dataset):
    """One split of litdata chunks as images ``uint8 (N, C, H, W)`` and labels ``long (N,)``.

    Random access through ``litdata.StreamingDataset.__getitem__`` (one item decoded per read,
    not a window); every item carries its index, which is checked, so chunks written in another
    order fail loudly instead of training on shuffled labels. ``__getitems__`` reads a batch in
    index order (litdata maps one chunk at a time, so this maps each chunk once per batch) and
    returns ``(uint8 (B, C, H, W), long (B,))`` in the order asked for.
    """

    def __init__(self, input_dir: str, download_dir: str | None, shape: Sequence[int]) -> None:
        self.input_dir, self.download_dir = input_dir, download_dir
        self.shape = tuple(shape)
        probe = self._open()
        first = probe[0]
        if tuple(first["image"].shape) != self.shape or first["index"] != 0:
            raise CacheError(
                f"litdata chunks in {input_dir} hold {first['image'].shape} images, not "
                f"{self.shape}; write them again with glowlab-prepare format=litdata"
            )
        self._len = len(probe.cache)  # all items (len(probe) is this rank's share under DDP)
        self._stream: Any = None

    def _open(self) -> Any:
        import litdata

        _quiet_litdata()
        return litdata.StreamingDataset(
            self.input_dir, cache_dir=self.download_dir, batch_decode=False
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    def __len__(self) -> int:
        return self._len

    def _item(self, index: int) -> tuple[np.ndarray, int]:
        if self._stream is None:
            self._stream = self._open()
        item = self._stream[int(index)]
        if item["index"] != index:
            raise CacheError(
                f"litdata chunks in {self.input_dir} are out of order (item {index} holds "
                f"{item['index']}); write them again with glowlab-prepare format=litdata"
            )
        return item["image"], item["label"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self._item(index)
        return torch.from_numpy(np.array(image)), torch.tensor(label)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = np.empty((len(indices), *self.shape), dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        for k in np.argsort(indices, kind="stable"):  # chunk by chunk: each is mapped once
            batch[k], labels[k] = self._item(int(indices[k]))
        return torch.from_numpy(batch), torch.from_numpy(labels)


def open_litdata(
    location: str | Path, shape: Sequence[int], num_classes: int, download_dir: Path
) -> RawData:
    """The splits at ``location`` as `StreamingImageDataset`s (remote chunks are downloaded into
    ``download_dir/<split>``)."""
    base = str(location).rstrip("/")
    remote = is_remote(location)

    def split(name: str) -> StreamingImageDataset:
        download = str(download_dir / name) if remote else None
        return StreamingImageDataset(f"{base}/{name}", download, shape)

    try:
        pool = split("pool")
        test = split("test")
    except CacheError:
        raise
    except (FileNotFoundError, ValueError, AssertionError) as err:
        raise CacheError(
            f"no litdata chunks at {base}/pool and {base}/test ({err}); write them with "
            f"glowlab-prepare format=litdata output={base}, or set data.stream_dir"
        ) from None
    except Exception as err:  # noqa: BLE001 - a remote store's client raises its own types
        if not remote:
            raise
        first = next(iter(str(err).splitlines()), "")
        raise CacheError(
            f"cannot read the litdata chunks at {base} ({type(err).__name__}: {first[:200]}); "
            "check the store's credentials (e.g. AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) "
            "and the network, or set data.stream_dir to a local folder"
        ) from None
    return RawData(pool=pool, test=test, num_classes=num_classes)
