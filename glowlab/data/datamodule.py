"""`ImageDataModule`: one LightningDataModule for every image dataset of glowlab."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from glowlab.data import cache, streaming
from glowlab.data.sources import SOURCES, RawData, Request, resolve_shape
from glowlab.validation import check_int

CARVED_TEST_FRACTION = 10  # datasets without a test split give 1/10 of their images to test
CARVED_TEST_SEED = 0  # carved test sets do not depend on `seed`
SUBSET_EVAL_RATIO = 5  # with train_subset=N, val and test keep at most max(N // 5, 1) images
FORMATS = ("raw", "memmap", "litdata")
log = logging.getLogger("glowlab.data")


def dataset_names() -> tuple[str, ...]:
    """The accepted values of ``ImageDataModule(name=...)``."""
    return tuple(SOURCES)


class BatchTransform:
    """Collate function: stack samples, reduce to ``n_bits``, optionally flip at random.

    Takes either a list of ``(x, y)`` samples or an already batched ``(x, y)`` tuple (from a
    dataset's ``__getitems__``) and returns ``x`` uint8 ``(B, C, H, W)`` in
    ``[0, 2**n_bits - 1]`` and ``y`` long ``(B,)``. With ``hflip`` each image is mirrored
    horizontally with probability 1/2 (torch's global RNG, seeded per worker by the loader).
    """

    def __init__(self, n_bits: int, hflip: bool) -> None:
        self.shift = 8 - n_bits
        self.hflip = hflip

    def __call__(
        self, batch: tuple[torch.Tensor, torch.Tensor] | list
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch if isinstance(batch, tuple) else default_collate(batch)
        if self.shift:
            x = x >> self.shift
        if self.hflip:
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, y


class ImageDataModule(L.LightningDataModule):
    """Train / val / test loaders of uint8 images ``(B, C, H, W)`` and long labels ``(B,)``.

    Splits: val is the last ``val_size`` images of a permutation (seeded with ``seed``) of the
    dataset's training pool, train the rest. Test is the official test split; datasets without
    one (``image_folder``, ``celeba`` without ``list_eval_partition.txt``) first give a tenth
    (at least one image) of their images, chosen by a fixed permutation that does not depend on
    ``seed``, to test. ``train_subset=N`` keeps the first N train images and at most
    ``max(N // 5, 1)`` val and test images. Labels are zeros for unlabeled datasets
    (``num_classes == 0``). ``root=None`` means the dataset's default location
    (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``, others ``data/<name>``).

    ``format`` picks the reader (the splits, order and batches are the same for all three):
    ``raw`` decodes the source files into memory in every process; ``memmap`` prepares them
    once into ``cache_dir`` (`glowlab.data.cache`; ``None``: beside the data in
    ``<root>/prepared`` where that can be written or already holds the cache, else
    ``cache_fallback``) and memory-maps the arrays; ``litdata`` reads litdata chunks at
    ``stream_dir`` (a folder or ``s3://``/``gs://`` URL; ``None``: converted from the prepared
    cache into ``<cache>/litdata``). The cache and a local conversion are written in
    ``prepare_data`` (local rank 0 of each node); the other ranks wait for them in ``setup``.
    """

    def __init__(
        self,
        name: str,
        root: str | None = None,
        image_size: int | None = None,
        n_bits: int = 8,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        train_subset: int | None = None,
        hflip: bool = False,
        download: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        channels: int | None = None,
        format: str = "raw",
        cache_dir: str | None = None,
        stream_dir: str | None = None,
        cache_fallback: str | None = None,
    ) -> None:
        super().__init__()
        if name not in SOURCES:
            raise ValueError(f"unknown dataset name={name!r}; choose one of {', '.join(SOURCES)}")
        if name == "image_folder" and root is None:
            raise ValueError("name=image_folder needs data.root=<folder of images>")
        check_int("data.n_bits", n_bits, 1, 8)
        check_int("data.batch_size", batch_size)
        check_int("data.eval_batch_size", eval_batch_size, optional=True)
        check_int("data.val_size", val_size, low=0)
        check_int("data.train_subset", train_subset, optional=True)
        check_int("data.image_size", image_size, optional=True)
        check_int("data.num_workers", num_workers, low=0)
        _check_format(name, format, stream_dir)
        self.save_hyperparameters()
        self.name = name
        self.source = SOURCES[name]
        self._shape = resolve_shape(name, image_size, channels)
        default_root = self.source.default_root or f"data/{name}"
        self.root = Path(root if root is not None else default_root).expanduser()
        self.n_bits = n_bits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.train_subset = train_subset
        self.hflip = hflip
        self.download = download
        self.num_workers = num_workers
        self.seed = seed
        self.format = format
        self.cache_dir = _cache_root(self.root, cache_dir, cache_fallback, self._shape, name)
        self.stream_dir = stream_dir
        self._num_classes = self.source.num_classes
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image, known without reading data."""
        return self._shape

    @property
    def num_classes(self) -> int | None:
        """Number of label classes (0: unlabeled; ``None``: image_folder before `setup`)."""
        return self._num_classes

    def prepare_data(self) -> None:
        """Once per node: download the dataset (``download=True``) and, for ``memmap`` and a
        local ``litdata`` folder, write what is missing or stale."""
        if self.format == "raw":
            if self.download:
                self.source.load(self.request())
        elif not self._remote():
            self._ready(build=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the data and build all three splits (once; later calls do nothing)."""
        if self.train_set is not None:
            return
        trainer = self.trainer
        raw = self._open(build=trainer is None or trainer.local_rank == 0)
        pool = torch.arange(len(raw.pool))
        if raw.test is None:
            if len(pool) < 2:
                raise ValueError(f"{self.name} under {self.root} has too few images to split")
            n_test = max(len(pool) // CARVED_TEST_FRACTION, 1)
            pool, test_idx = _split(pool, n_test, CARVED_TEST_SEED)
            test_source = raw.pool
        else:
            test_idx, test_source = torch.arange(len(raw.test)), raw.test
        if self.val_size >= len(pool):
            raise ValueError(
                f"val_size={self.val_size} leaves no training images: {self.name} has "
                f"{len(pool)} images to split into train and val; lower data.val_size"
            )
        train_idx, val_idx = _split(pool, self.val_size, self.seed)
        if self.train_subset is not None:
            keep = max(self.train_subset // SUBSET_EVAL_RATIO, 1)
            train_idx, val_idx, test_idx = (
                train_idx[: self.train_subset],
                val_idx[:keep],
                test_idx[:keep],
            )
        self._num_classes = raw.num_classes
        self.train_set = Subset(raw.pool, train_idx.tolist())
        self.val_set = Subset(raw.pool, val_idx.tolist())
        self.test_set = Subset(test_source, test_idx.tolist())

    def train_dataloader(self) -> DataLoader:
        train_set = self._require(self.train_set)
        if len(train_set) < self.batch_size:
            raise ValueError(
                f"the train split of {self.name} has {len(train_set)} images, fewer than "
                f"batch_size={self.batch_size}, so no full batch exists; lower data.batch_size"
            )
        return self._loader(train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_set), self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.test_set), self.eval_batch_size, train=False)

    def _remote(self) -> bool:
        return self.format == "litdata" and streaming.is_remote(self.stream_dir or "")

    def _ready(self, build: bool) -> tuple[cache.CacheInfo, Path | None]:
        """The complete prepared cache and, for ``litdata``, the local chunks folder: written
        here if ``build``, else waited for (local rank 0 writes them)."""
        req = self.request()
        if build:
            info = cache.prepare(self.name, req, self.cache_dir, log.info)
        else:
            info = cache.wait_for(self.name, req, self.cache_dir)
        if self.format != "litdata":
            return info, None
        location = Path(self.litdata_location(info))
        if build:
            streaming.prepare_litdata(info, location, max(self.num_workers, 1), log.info)
        else:
            streaming.wait_for_litdata(info, location)
        return info, location

    def _open(self, build: bool) -> RawData:
        """The pool and test split in the chosen format (`_ready` for the prepared ones)."""
        if self.format == "raw":
            return self.source.load(self.request())
        if self._remote():
            url = self.stream_dir.rstrip("/")
            key = hashlib.sha256(url.encode()).hexdigest()[:12]
            download = self.cache_dir / "litdata-downloads" / f"{self.name}-{key}"
            return streaming.open_litdata(url, self._shape, self.source.num_classes, download)
        info, location = self._ready(build)
        if location is None:
            return cache.open_cache(info)
        return streaming.open_litdata(location, self._shape, info.num_classes, location)

    def litdata_location(self, info: cache.CacheInfo) -> Path | str:
        """Where the litdata chunks are: ``stream_dir`` (a URL stays text) or, by default,
        ``litdata/`` inside the prepared cache ``info``."""
        if self.stream_dir is None:
            return info.path / "litdata"
        return self.stream_dir if streaming.is_remote(self.stream_dir) else Path(self.stream_dir)

    def request(self) -> Request:
        """What the dataset's loader is asked for: root, resolved shape, download, seed."""
        channels, size, _ = self._shape
        return Request(self.root, size, channels, self.download, self.seed)

    @staticmethod
    def _require(dataset: Dataset | None) -> Dataset:
        if dataset is None:
            raise RuntimeError("call ImageDataModule.setup() before asking for a dataloader")
        return dataset

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=BatchTransform(self.n_bits, self.hflip and train),
            # evaluation loaders get their own generator so they never draw from (and shift)
            # the global random stream that training, and an exact resume, depend on
            generator=None if train else torch.Generator().manual_seed(self.seed),
        )


def _split(indices: torch.Tensor, n_last: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute ``indices`` with ``seed``; return (all but the last ``n_last``, the last ones)."""
    perm = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))]
    cut = len(perm) - n_last
    return perm[:cut], perm[cut:]


def _cache_root(
    root: Path, cache_dir: str | None, fallback: str | None, shape: tuple, name: str
) -> Path:
    """Where prepared caches go: ``cache_dir`` if given; else ``<root>/prepared`` when it already
    holds this dataset's cache or can be created there; else ``fallback`` (if given)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    beside = root / "prepared"
    prefix = f"{name}-{shape[0]}x{shape[1]}x{shape[2]}-"
    has_cache = beside.is_dir() and any(p.name.startswith(prefix) for p in beside.iterdir())
    if has_cache or fallback is None or _writable(beside):
        return beside
    return Path(fallback).expanduser()


def _writable(path: Path) -> bool:
    """Whether ``path`` can be created and written (its first existing ancestor is writable)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return existing.is_dir() and os.access(existing, os.W_OK)


def _check_format(name: str, format: str, stream_dir: str | None) -> None:
    """Raise ValueError unless ``format`` is a reader that dataset ``name`` supports."""
    if format not in FORMATS:
        raise ValueError(
            f"format={format!r} is not a data format; set data.format to {', '.join(FORMATS)}"
        )
    if format != "raw" and not SOURCES[name].preparable:
        ready = ", ".join(n for n, s in SOURCES.items() if s.preparable)
        raise ValueError(
            f"data.format={format} needs a dataset stored as one array per split ({ready}); "
            f"{name} is read file by file or generated: set data.format=raw"
        )
    if stream_dir is not None and format != "litdata":
        raise ValueError(
            f"data.stream_dir={stream_dir} is read only with data.format=litdata; set it or "
            "drop data.stream_dir"
        )
