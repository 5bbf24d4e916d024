"""Writers of tiny datasets in the real on-disk formats (IDX, CIFAR pickles, ImageNet npz,
image folders, CelebA), shared by the data and training tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 or int32 ``array`` as an IDX file (gzip-compressed when ``compress``)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def make_idx_set(root: Path, n_train: int = 120, n_test: int = 30) -> dict[str, np.ndarray]:
    """A Fashion-MNIST-layout IDX set (4 gz files) of random 28x28 images; returns its arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(root / IDX_NAMES[key], array)
    return arrays


def make_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` (5 train batches, ``test_batch``, ``batches.meta``);
    returns the test batch's ``data`` (N, 3072) and ``labels``."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return {"data": batch["data"], "labels": np.array(batch["labels"])}


def make_imagenet(root: Path, size: int, per_batch: int = 8, n_val: int = 12) -> np.ndarray:
    """Downsampled-ImageNet npz files (10 train batches, ``val_data.npz``); returns val data."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    names = [(f"train_data_batch_{i}", per_batch) for i in range(1, 11)] + [("val_data", n_val)]
    for name, n in names:
        data = rng.integers(0, 256, (n, 3 * size * size), dtype=np.uint8)
        np.savez(root / f"{name}.npz", data=data, labels=rng.integers(1, 1001, n))
    return data


def gradient_image(width: int, height: int, seed: int) -> Image.Image:
    """An asymmetric RGB image: a horizontal ramp plus noise."""
    rng = np.random.default_rng(seed)
    pixels = np.linspace(0, 215, width)[None, :, None] + rng.integers(0, 40, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def make_image_folder(root: Path) -> Path:
    """Class folders ``cats`` (4 PNG) and ``dogs`` (4 JPEG, one grayscale), a truncated JPEG
    and a text file; returns the truncated file."""
    for label, ext in [("cats", "png"), ("dogs", "jpg")]:
        (root / label).mkdir(parents=True)
        for i in range(4):
            img = gradient_image(20 + 7 * i, 16 + 5 * i, seed=i)
            img = img.convert("L") if (label, i) == ("dogs", 3) else img
            img.save(root / label / f"{label}_{i}.{ext}")
    good = (root / "dogs" / "dogs_0.jpg").read_bytes()
    broken = root / "dogs" / "broken.jpg"
    broken.write_bytes(good[: len(good) // 2])
    (root / "dogs" / "notes.txt").write_text("not an image")
    return broken


def make_celeba(root: Path, n: int = 12, with_partition: bool = True) -> None:
    """``root/img_align_celeba`` of ``n`` 178x218 JPEGs; the partition file puts the last 3 in
    the test split (2) and the 2 before them in valid (1)."""
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    lines = []
    for i in range(1, n + 1):
        gradient_image(178, 218, seed=i).save(folder / f"{i:06d}.jpg")
        lines.append(f"{i:06d}.jpg {2 if i > n - 3 else 1 if i > n - 5 else 0}")
    if with_partition:
        (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
