"""Dataset sources: image shapes, default locations and one loader per dataset name.

Every loader takes a `Request` and returns `RawData`: the pool that train and val are carved
from, and the official test split (``None`` where the dataset has none). Items are
``(x, y)`` with ``x`` uint8 ``(C, H, W)`` and ``y`` a long scalar. In-memory sources (IDX,
CIFAR-10, ImageNet npz, synthetic) hold one uint8 tensor ``(N, C, H, W)`` per split; CelebA and
image folders decode their files lazily. Sources read from files that are one array per split
also name those files (``Source.files``), so that they can be prepared into a memory-mapped
cache (`glowlab.data.cache`).
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from glowlab.data.idx import read_idx
from glowlab.data.image_folder import (
    IMAGE_EXTENSIONS,
    FileInfo,
    ImageFileDataset,
    UnsupportedModeError,
    mode_conversion,
    scan_files,
    scan_image_folder,
)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGENET_URL = "https://image-net.org/download-images.php"
CELEBA_CROP = 148
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2048, 256
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are missing; the message says how to get them."""


class TensorImageDataset(Dataset):
    """In-memory images ``images`` uint8 ``(N, C, H, W)`` with ``labels`` long ``(N,)``.

    ``__getitems__`` (used by `DataLoader` for whole batches) returns the batch
    ``(uint8 (B, C, H, W), long (B,))`` with a single indexing operation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(labels) != len(images):
            raise ValueError(
                f"expected uint8 images (N, C, H, W) and N labels, got {images.dtype} "
                f"{tuple(images.shape)} images and {len(labels)} labels"
            )
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


@dataclass(frozen=True)
class Request:
    """What a loader needs: where to look and the resolved image format. ``allocate(name,
    shape, dtype)`` gives the arrays a loader assembles from many files (``np.empty`` when
    ``None``); `glowlab.data.cache` passes one that creates the cache's files, so preparing
    ImageNet never holds the whole dataset in memory."""

    root: Path
    image_size: int
    channels: int
    download: bool
    seed: int
    allocate: Callable[[str, tuple[int, ...], np.dtype], np.ndarray] | None = None

    def array(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A new array ``name`` (e.g. ``pool_images``) to fill, from ``allocate``."""
        if self.allocate is None:
            return np.empty(shape, dtype=dtype)
        return self.allocate(name, shape, np.dtype(dtype))


@dataclass(frozen=True)
class RawData:
    """A loaded dataset: ``pool`` (train + val), ``test`` (``None``: carve one from the pool)."""

    pool: Dataset
    test: Dataset | None
    num_classes: int


@dataclass(frozen=True)
class Source:
    """How to load one dataset and what it looks like before loading.

    ``shape`` is the default ``(C, H, W)``; ``resizable`` sources accept any ``image_size``;
    ``channel_options`` lists the allowed ``channels`` (empty: only the default).
    ``num_classes`` is ``None`` when only loading tells (0 means "no labels"). ``files``
    lists the files ``load`` reads (downloading them first where ``Request.download`` allows,
    else `DatasetNotFoundError`); sources without it cannot be prepared into a cache.
    """

    load: Callable[[Request], RawData]
    shape: tuple[int, int, int]
    num_classes: int | None
    default_root: str | None
    resizable: bool = False
    channel_options: tuple[int, ...] = ()
    files: Callable[[Request], list[Path]] | None = None

    @property
    def preparable(self) -> bool:
        """Whether the source is one array per split read from ``files`` (memmap / litdata)."""
        return self.files is not None


# ----------------------------------------------------------------------------- IDX (MNIST-like)


def _find(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first existing ``dir / name`` (dirs outer, names inner), else ``None``."""
    return next((d / n for d in dirs for n in names if (d / n).is_file()), None)


def _torchvision_download(class_name: str, root: Path, **kwargs: object) -> None:
    import torchvision.datasets

    getattr(torchvision.datasets, class_name)(root=str(root), download=True, **kwargs)


def _idx_files(req: Request, class_name: str, how_to_get: str) -> list[Path]:
    """The four (optionally gzipped) IDX files in ``root`` or ``root/<class>/raw``."""
    dirs = [req.root, req.root / class_name / "raw"]
    paths = [_find(dirs, [f"{stem}.gz", stem]) for stem in _IDX_FILES]
    if None in paths and req.download:
        _torchvision_download(class_name, req.root)
        paths = [_find(dirs, [f"{stem}.gz", stem]) for stem in _IDX_FILES]
    if None in paths:
        absent = ", ".join(f"{s}.gz" for s, p in zip(_IDX_FILES, paths, strict=True) if p is None)
        raise DatasetNotFoundError(
            f"{class_name} not found: {absent} missing in {req.root} "
            f"(also looked in {dirs[1]}). {how_to_get}"
        )
    return paths


def _load_idx_source(req: Request, class_name: str, how_to_get: str) -> RawData:
    """Read the four IDX files (`_idx_files`) into a pool and a test split."""
    paths = _idx_files(req, class_name, how_to_get)
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    return RawData(
        pool=_idx_dataset(train_x, train_y, paths[0], paths[1]),
        test=_idx_dataset(test_x, test_y, paths[2], paths[3]),
        num_classes=10,
    )


def _idx_dataset(
    images: torch.Tensor, labels: torch.Tensor, image_path: Path, label_path: Path
) -> TensorImageDataset:
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(
            f"{image_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{label_path} holds {tuple(labels.shape)} labels for the {len(images)} images "
            f"of {image_path}; the two files do not match"
        )
    return TensorImageDataset(images.unsqueeze(1), labels)


_FASHION_MNIST_HOW = (
    "Get it with `apt-get install dataset-fashion-mnist` (installs it into "
    f"{FASHION_MNIST_ROOT}, the default data.root), or set data.download=true to "
    "download it with torchvision into data.root, or point data.root=<dir> at a folder "
    f"holding {', '.join(f'{s}.gz' for s in _IDX_FILES)}."
)
_MNIST_HOW = (
    "Set data.download=true to download it with torchvision into data.root, or point "
    f"data.root=<dir> at a folder holding {', '.join(f'{s}.gz' for s in _IDX_FILES)}."
)


def fashion_mnist_files(req: Request) -> list[Path]:
    """The four Fashion-MNIST IDX files (`_idx_files`)."""
    return _idx_files(req, "FashionMNIST", _FASHION_MNIST_HOW)


def load_fashion_mnist(req: Request) -> RawData:
    """Fashion-MNIST, 1x28x28, 60000 train (pool) / 10000 test, 10 classes."""
    return _load_idx_source(req, "FashionMNIST", _FASHION_MNIST_HOW)


def mnist_files(req: Request) -> list[Path]:
    """The four MNIST IDX files (`_idx_files`)."""
    return _idx_files(req, "MNIST", _MNIST_HOW)


def load_mnist(req: Request) -> RawData:
    """MNIST, 1x28x28, 60000 train (pool) / 10000 test, 10 classes."""
    return _load_idx_source(req, "MNIST", _MNIST_HOW)


# ----------------------------------------------------------------------------- CIFAR-10


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 python batch -> ``(uint8 (N, 3, 32, 32), long (N,))``."""
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a valid CIFAR-10 python batch ({err!r})") from err
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return torch.from_numpy(data), torch.from_numpy(labels)


def cifar10_files(req: Request) -> list[Path]:
    """``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` of ``cifar-10-batches-py``."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    candidates = [req.root / "cifar-10-batches-py", req.root]
    folder = next((d for d in candidates if all((d / n).is_file() for n in names)), None)
    if folder is None and req.download:
        _torchvision_download("CIFAR10", req.root)
        folder = candidates[0]
    if folder is None:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: expected {candidates[0]}/ with {', '.join(names)}. "
            "Set data.download=true to download it with torchvision into data.root, or point "
            "data.root=<dir> at the folder that contains cifar-10-batches-py/."
        )
    return [folder / name for name in names]


def load_cifar10(req: Request) -> RawData:
    """CIFAR-10, 3x32x32, 50000 train (pool) / 10000 test, 10 classes."""
    *train_files, test_file = cifar10_files(req)
    train = [_read_cifar_batch(path) for path in train_files]
    test_x, test_y = _read_cifar_batch(test_file)
    return RawData(
        pool=TensorImageDataset(*map(torch.cat, zip(*train, strict=True))),
        test=TensorImageDataset(test_x, test_y),
        num_classes=10,
    )


# ----------------------------------------------------------------------------- CelebA


def _read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt`` (``name split``) or the ``.csv`` variant -> name: split."""
    splits = {}
    for line in path.read_text().splitlines():
        fields = line.replace(",", " ").split()
        if len(fields) == 2 and fields[1].isdigit():
            splits[fields[0]] = int(fields[1])
    return splits


def load_celeba(req: Request) -> RawData:
    """CelebA aligned faces (``img_align_celeba/*.jpg``), center crop 148, resized; no labels.

    With ``list_eval_partition.txt`` (or ``.csv``) beside the image folder, its split 2 is the
    test set and splits 0 and 1 form the pool; without it the test set is carved from the pool.
    """
    candidates = [req.root / "img_align_celeba", req.root / "celeba" / "img_align_celeba"]
    folder = next((d for d in candidates if d.is_dir()), None)
    if folder is None and req.download:
        _torchvision_download("CelebA", req.root, split="all")
        folder = candidates[1]
    files = sorted(folder.glob("*.jpg")) if folder is not None else []
    if not files:
        raise DatasetNotFoundError(
            f"CelebA not found: no img_align_celeba/*.jpg in {req.root} or {req.root / 'celeba'}. "
            "Set data.download=true to download it with torchvision into data.root, or point "
            "data.root=<dir> at the folder that contains img_align_celeba/."
        )
    partition_file = _find([folder.parent], ["list_eval_partition.txt", "list_eval_partition.csv"])
    split = _read_partition(partition_file) if partition_file else {}
    pool = [f for f in files if split.get(f.name) != 2]
    test = [f for f in files if split.get(f.name) == 2]

    def dataset(paths: list[Path]) -> ImageFileDataset:
        return ImageFileDataset(paths, [0] * len(paths), req.image_size, 3, crop=CELEBA_CROP)

    return RawData(pool=dataset(pool), test=dataset(test) if test else None, num_classes=0)


# ----------------------------------------------------------------------------- ImageNet npz


def _npz_arrays(path: Path, keys: Sequence[str]) -> list[np.ndarray]:
    try:
        with np.load(path) as npz:
            return [npz[key] for key in keys]
    except (KeyError, OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a valid downsampled-ImageNet npz file ({err!r})") from err


def _read_imagenet(
    paths: Sequence[Path], size: int, req: Request, split: str
) -> TensorImageDataset:
    """Concatenate npz batches (``data`` (N, 3*S*S) uint8 channel-major, ``labels`` 1-based)
    into arrays ``<split>_images`` (N, 3, S, S) and ``<split>_labels`` from ``req.array``."""
    counts = [len(_npz_arrays(p, ["labels"])[0]) for p in paths]
    images_4d = req.array(f"{split}_images", (sum(counts), 3, size, size), np.uint8)
    images = images_4d.reshape(sum(counts), 3 * size * size)
    labels = req.array(f"{split}_labels", (sum(counts),), np.int64)
    start = 0
    for path, count in zip(paths, counts, strict=True):
        data, target = _npz_arrays(path, ["data", "labels"])
        if data.dtype != np.uint8 or data.shape != (count, 3 * size * size):
            raise ValueError(
                f"{path}: expected uint8 data of shape ({count}, {3 * size * size}) for "
                f"imagenet{size}, got {data.dtype} {data.shape}"
            )
        if count and not 1 <= target.min() <= target.max() <= 1000:
            raise ValueError(f"{path}: labels must be 1-based class ids in 1..1000")
        images[start : start + count] = data
        labels[start : start + count] = target - 1
        start += count
    return TensorImageDataset(torch.from_numpy(images_4d), torch.from_numpy(labels))


def _imagenet_files(req: Request, size: int) -> list[Path]:
    """``train_data_batch_1.npz`` ... ``train_data_batch_10.npz`` and ``val_data.npz``."""
    dirs = [req.root, req.root / f"Imagenet{size}_train_npz", req.root / f"Imagenet{size}_val_npz"]
    names = [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]
    paths = [_find(dirs, [name]) for name in names]
    if None in paths:
        absent = ", ".join(n for n, p in zip(names, paths, strict=True) if p is None)
        raise DatasetNotFoundError(
            f"imagenet{size} not found: {absent} missing in {req.root}. Automatic download is "
            f"not possible: log in at {IMAGENET_URL}, download the downsampled 'Imagenet{size}' "
            f"train and val npz archives (Imagenet{size}_train_npz.zip, "
            f"Imagenet{size}_val_npz.zip) and unzip them into data.root so that it holds "
            "train_data_batch_1.npz ... train_data_batch_10.npz and val_data.npz (each with "
            f"'data' (N, {3 * size * size}) uint8 channel-major and 1-based 'labels'), "
            "directly or in their Imagenet*_npz subfolders."
        )
    return paths


def _load_imagenet(req: Request, size: int) -> RawData:
    paths = _imagenet_files(req, size)
    return RawData(
        pool=_read_imagenet(paths[:-1], size, req, "pool"),
        test=_read_imagenet(paths[-1:], size, req, "test"),
        num_classes=1000,
    )


def imagenet32_files(req: Request) -> list[Path]:
    return _imagenet_files(req, 32)


def imagenet64_files(req: Request) -> list[Path]:
    return _imagenet_files(req, 64)


def load_imagenet32(req: Request) -> RawData:
    """Downsampled ImageNet 32x32: ~1.28M train (pool) / 50000 val as test, 1000 classes."""
    return _load_imagenet(req, 32)


def load_imagenet64(req: Request) -> RawData:
    """Downsampled ImageNet 64x64: ~1.28M train (pool) / 50000 val as test, 1000 classes."""
    return _load_imagenet(req, 64)


# ----------------------------------------------------------------------------- image folder


def load_image_folder(req: Request) -> RawData:
    """Every image below ``root`` (class = first-level subfolder); no official test split.

    Files PIL cannot decode are skipped with one warning; images smaller than ``image_size``
    or not square, 16-bit images (scaled to 8 bits, ``x >> 8``) and images in another colour
    mode (converted to ``L`` or ``RGB``, as ``glowlab-score`` does) are each counted in one
    warning; 32-bit integer or float images are refused (`UnsupportedModeError`).
    """
    if req.root.exists() and not req.root.is_dir():
        raise DatasetNotFoundError(
            f"data.root={req.root} is a file, not a folder; set data.root=<folder of images> "
            f"(e.g. data.root={req.root.parent})"
        )
    if not req.root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {req.root} does not exist; set data.root=<folder of images>"
        )
    files, labels, classes = scan_image_folder(req.root)
    if not files:
        raise DatasetNotFoundError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {req.root}; "
            "put images there (optionally in one subfolder per class) or set data.root"
        )
    mode = "L" if req.channels == 1 else "RGB"
    infos = scan_files(files, mode, req.image_size)
    bad = {info.path for info in infos if not info.readable}
    if len(bad) == len(files):
        raise DatasetNotFoundError(
            f"none of the {len(files)} image files under {req.root} can be decoded"
        )
    if bad:
        _warn_files(f"skipping {{n}} unreadable image file(s) under {req.root}", sorted(bad))
        kept = [(f, y) for f, y in zip(files, labels, strict=True) if f not in bad]
        files, labels = [f for f, _ in kept], [y for _, y in kept]
    _check_folder_images([info for info in infos if info.readable], req)
    dataset = ImageFileDataset(files, labels, req.image_size, req.channels)
    return RawData(pool=dataset, test=None, num_classes=len(classes))


def _check_folder_images(infos: Sequence[FileInfo], req: Request) -> None:
    """Refuse modes with no exact map to 8 bits; warn about images that get upscaled,
    center-cropped, scaled from 16 bits or converted to another colour mode, with their
    count."""
    side = req.image_size
    refused = [info for info in infos if not info.exact]
    if refused:
        modes = sorted({info.mode for info in refused})
        raise UnsupportedModeError(
            f"{len(refused)} image file(s) under {req.root} are in PIL mode {'/'.join(modes)} "
            f"(32-bit integer or float), which has no exact map to 8-bit pixels, e.g. "
            f"{refused[0].path}; save them as 8- or 16-bit PNG"
        )
    small = [i for i in infos if min(i.size) < side]
    oblong = [i for i in infos if i.size[0] != i.size[1]]
    deep = [i for i in infos if i.sixteen_bit]
    total = len(infos)
    _warn_files(
        f"{{n}} of {total} images under {req.root} are smaller than {side}x{side} and are "
        "upscaled (bicubic), which invents detail; use data.image_size=<smaller side>",
        [f"{i.path} ({i.size[0]}x{i.size[1]})" for i in small],
    )
    _warn_files(
        f"{{n}} of {total} images under {req.root} are not square; their shorter side is "
        f"scaled to {side} and the centre {side}x{side} kept (the rest is cropped away)",
        [f"{i.path} ({i.size[0]}x{i.size[1]})" for i in oblong],
    )
    _warn_files(
        f"{{n}} of {total} images under {req.root} have 16-bit pixels; they are scaled "
        f"exactly to the model's bits (x >> (16 - n_bits))",
        [str(i.path) for i in deep],
    )
    converted, names = mode_conversion(infos, "L" if req.channels == 1 else "RGB")
    _warn_files(f"{{n}} of {total} images under {req.root} {converted}", names)


def _warn_files(message: str, names: Sequence[object]) -> None:
    """One warning ``message`` (``{n}`` = the count) naming the first five of ``names``."""
    if names:
        shown = ", ".join(map(str, names[:5])) + (", ..." if len(names) > 5 else "")
        warnings.warn(f"{message.format(n=len(names))}: {shown}", stacklevel=3)


# ----------------------------------------------------------------------------- synthetic


def make_blobs(n: int, size: int, channels: int, seed: int) -> torch.Tensor:
    """``n`` images uint8 ``(n, C, S, S)``: 1 to 4 soft colored Gaussian blobs each."""
    gen = torch.Generator().manual_seed(seed)
    centers = 0.15 + 0.7 * torch.rand(n, 4, 2, generator=gen)
    widths = 0.06 + 0.1 * torch.rand(n, 4, 1, 1, generator=gen)
    colors = 0.4 + 0.6 * torch.rand(n, 4, channels, generator=gen)
    present = torch.rand(n, 4, 1, 1, generator=gen) < 0.6
    present[:, 0] = True
    grid = (torch.arange(size) + 0.5) / size
    dy = grid.view(1, 1, size, 1) - centers[..., 0, None, None]
    dx = grid.view(1, 1, 1, size) - centers[..., 1, None, None]
    blobs = torch.exp(-(dy**2 + dx**2) / (2 * widths**2)) * present
    images = torch.einsum("nkhw,nkc->nchw", blobs, colors).clamp(0, 1)
    return (images * 255).round().to(torch.uint8)


def brightest_quadrant(images: torch.Tensor) -> torch.Tensor:
    """Labels ``(N,)`` of uint8 ``(N, C, H, W)`` images: the brightest quadrant
    (0 top left, 1 top right, 2 bottom left, 3 bottom right)."""
    total = images.float().sum(1)
    h, w = total.shape[1] // 2, total.shape[2] // 2
    quadrants = [total[:, :h, :w], total[:, :h, w:], total[:, h:, :w], total[:, h:, w:]]
    return torch.stack([q.sum((1, 2)) for q in quadrants], 1).argmax(1)


def load_synthetic(req: Request) -> RawData:
    """Deterministic blob images from ``seed``: 2048 pool / 256 test, 4 classes (brightest
    quadrant). Nothing is read from disk."""
    images = make_blobs(SYNTHETIC_TRAIN + SYNTHETIC_TEST, req.image_size, req.channels, req.seed)
    labels = brightest_quadrant(images)
    return RawData(
        pool=TensorImageDataset(images[:SYNTHETIC_TRAIN], labels[:SYNTHETIC_TRAIN]),
        test=TensorImageDataset(images[SYNTHETIC_TRAIN:], labels[SYNTHETIC_TRAIN:]),
        num_classes=4,
    )


SOURCES: dict[str, Source] = {
    "fashion_mnist": Source(
        load_fashion_mnist, (1, 28, 28), 10, FASHION_MNIST_ROOT, files=fashion_mnist_files
    ),
    "mnist": Source(load_mnist, (1, 28, 28), 10, "data/mnist", files=mnist_files),
    "cifar10": Source(load_cifar10, (3, 32, 32), 10, "data/cifar10", files=cifar10_files),
    "celeba": Source(load_celeba, (3, 64, 64), 0, "data/celeba", resizable=True),
    "imagenet32": Source(
        load_imagenet32, (3, 32, 32), 1000, "data/imagenet32", files=imagenet32_files
    ),
    "imagenet64": Source(
        load_imagenet64, (3, 64, 64), 1000, "data/imagenet64", files=imagenet64_files
    ),
    "image_folder": Source(load_image_folder, (3, 64, 64), None, None, True, (1, 3)),
    "synthetic": Source(load_synthetic, (1, 16, 16), 4, None, True, (1, 2, 3, 4)),
}


def resolve_shape(name: str, image_size: int | None, channels: int | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of dataset ``name`` given the optional overrides, validated."""
    source = SOURCES[name]
    default_c, default_h, default_w = source.shape
    if image_size is not None and not source.resizable and image_size != default_h:
        raise ValueError(
            f"image_size={image_size} is not supported for {name}, whose images are "
            f"{default_h}x{default_w}; leave data.image_size unset (null)"
        )
    allowed = source.channel_options or (default_c,)
    if channels is not None and channels not in allowed:
        raise ValueError(
            f"channels={channels} is not supported for {name}; use "
            f"{' or '.join(map(str, allowed))} (or leave data.channels unset)"
        )
    size = image_size if image_size is not None else default_h
    return (channels if channels is not None else default_c, size, size)
