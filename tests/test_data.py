"""Tests of glowlab.data on tiny datasets written in the real file formats, and on the real
Fashion-MNIST when it is installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from glowlab.data import DatasetNotFoundError, ImageDataModule, dataset_names
from glowlab.data.idx import IDXFormatError, read_idx
from tests.fixtures import (
    IDX_NAMES,
    make_celeba,
    make_cifar10,
    make_idx_set,
    make_image_folder,
    make_imagenet,
    write_idx,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# ----------------------------------------------------------------------------- helpers


def all_batches(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every ``(x, y)`` batch of ``loader``."""
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def split_images(dataset: Dataset) -> torch.Tensor:
    """The images of ``dataset`` in index order, uint8 ``(N, C, H, W)``."""
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def check_batch(
    x: torch.Tensor, y: torch.Tensor, shape: tuple[int, int, int], n_bits: int = 8
) -> None:
    assert x.dtype == torch.uint8 and y.dtype == torch.long
    assert tuple(x.shape[1:]) == shape and y.shape == (len(x),)
    assert int(x.max()) <= 2**n_bits - 1


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    make_idx_set(tmp_path / "fmnist")
    return tmp_path / "fmnist"


# ----------------------------------------------------------------------------- IDX reader


def test_read_idx_plain_and_gzip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    values = np.array([-5, 70000, 3], dtype=np.int32)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "b", values, compress=False)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(images))
    assert read_idx(tmp_path / "b").tolist() == [-5, 70000, 3]


@pytest.mark.parametrize("damage", ["truncated_data", "truncated_gzip", "bad_magic", "header"])
def test_read_idx_rejects_damaged_files(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "damaged-idx3-ubyte.gz"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8), compress=False)
    raw = path.read_bytes()
    damaged = {
        "truncated_data": gzip.compress(raw[:-10]),
        "truncated_gzip": gzip.compress(raw)[:-20],
        "bad_magic": b"\x01\x02" + raw[2:],
        "header": raw[:9],
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(IDXFormatError, match="damaged-idx3-ubyte.gz"):
        read_idx(path)


# ----------------------------------------------------------------------------- arguments


def test_dataset_names() -> None:
    assert set(dataset_names()) == {
        "fashion_mnist", "mnist", "cifar10", "celeba", "imagenet32", "imagenet64",
        "image_folder", "synthetic",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "shape", "num_classes"),
    [
        ({"name": "fashion_mnist"}, (1, 28, 28), 10),
        ({"name": "mnist"}, (1, 28, 28), 10),
        ({"name": "cifar10"}, (3, 32, 32), 10),
        ({"name": "celeba"}, (3, 64, 64), 0),
        ({"name": "celeba", "image_size": 32}, (3, 32, 32), 0),
        ({"name": "imagenet32"}, (3, 32, 32), 1000),
        ({"name": "imagenet64"}, (3, 64, 64), 1000),
        ({"name": "image_folder", "image_size": 48}, (3, 48, 48), None),
        ({"name": "image_folder", "image_size": 8, "channels": 1}, (1, 8, 8), None),
        ({"name": "synthetic"}, (1, 16, 16), 4),
        ({"name": "synthetic", "image_size": 8, "channels": 3}, (3, 8, 8), 4),
    ],
)
def test_shape_known_before_reading(kwargs: dict, shape: tuple, num_classes: int | None) -> None:
    dm = ImageDataModule(root="/nonexistent/glowlab-data", **kwargs)
    assert dm.image_shape == shape
    assert dm.num_classes == num_classes


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"name": "svhn"}, "fashion_mnist"),
        ({"n_bits": 0}, "n_bits"),
        ({"n_bits": 9}, "n_bits"),
        ({"n_bits": 2.5}, "n_bits"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": -1}, "eval_batch_size"),
        ({"val_size": -1}, "val_size"),
        ({"train_subset": 0}, "train_subset"),
        ({"image_size": 0}, "image_size"),
        ({"num_workers": -2}, "num_workers"),
        ({"image_size": 32}, "image_size"),
        ({"channels": 3}, "channels"),
        ({"name": "synthetic", "channels": 0}, "channels"),
        ({"name": "image_folder"}, "data.root"),
    ],
)
def test_bad_arguments_name_the_option(kwargs: dict, option: str) -> None:
    kwargs = {"name": "mnist", **kwargs}
    with pytest.raises(ValueError, match=option):
        ImageDataModule(**kwargs)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="svhn") as info:
        ImageDataModule("svhn")
    assert all(name in str(info.value) for name in dataset_names())


def test_val_size_and_batch_size_too_large(idx_root: Path) -> None:
    dm = ImageDataModule("fashion_mnist", root=str(idx_root), val_size=120)
    with pytest.raises(ValueError, match="val_size"):
        dm.setup()
    dm = ImageDataModule("fashion_mnist", root=str(idx_root), val_size=20, batch_size=128)
    dm.setup()
    with pytest.raises(ValueError, match="batch_size"):
        dm.train_dataloader()


def test_loader_before_setup_raises() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        ImageDataModule("synthetic").val_dataloader()


# ----------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    ("name", "fixes"),
    [
        ("fashion_mnist", ["apt-get install dataset-fashion-mnist", "data.download=true",
                           "data.root", "train-images-idx3-ubyte.gz"]),
        ("mnist", ["data.download=true", "data.root", "t10k-labels-idx1-ubyte.gz"]),
        ("cifar10", ["data.download=true", "data.root", "cifar-10-batches-py"]),
        ("celeba", ["data.download=true", "data.root", "img_align_celeba"]),
        ("imagenet32", ["image-net.org", "train_data_batch_1.npz", "train_data_batch_10.npz",
                        "val_data.npz", "Imagenet32_train_npz.zip", "1-based"]),
        ("imagenet64", ["image-net.org", "train_data_batch_10.npz", "val_data.npz",
                        "Imagenet64_val_npz.zip"]),
        ("image_folder", ["does not exist", "data.root"]),
    ],
)  # fmt: skip
def test_missing_data_says_how_to_get_it(tmp_path: Path, name: str, fixes: list[str]) -> None:
    root = tmp_path / "absent"
    dm = ImageDataModule(name, root=str(root), val_size=1)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()
    assert isinstance(info.value, FileNotFoundError)
    for fix in fixes + [str(root)]:
        assert fix in str(info.value)


def test_empty_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    dm = ImageDataModule("image_folder", root=str(tmp_path / "empty"), val_size=1)
    with pytest.raises(DatasetNotFoundError, match="no image files .* found under .*empty"):
        dm.setup()


# ----------------------------------------------------------------------------- IDX datasets


def test_idx_dataset_shapes_labels_and_test_order(tmp_path: Path) -> None:
    arrays = make_idx_set(tmp_path)
    dm = ImageDataModule("fashion_mnist", root=str(tmp_path), val_size=20, batch_size=16)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 20, 30)
    loader = dm.train_dataloader()
    assert len(loader) == 100 // 16
    for x, y in loader:
        check_batch(x, y, (1, 28, 28))
        assert len(x) == 16
    x, y = all_batches(dm.test_dataloader())
    assert torch.equal(x[:, 0], torch.from_numpy(arrays["test_images"]))
    assert torch.equal(y, torch.from_numpy(arrays["test_labels"]).long())


def test_plain_idx_in_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    arrays = make_idx_set(raw, n_train=40, n_test=10)
    for gz in raw.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    dm = ImageDataModule("mnist", root=str(tmp_path), val_size=10, batch_size=8)
    dm.setup()
    x, _ = all_batches(dm.test_dataloader())
    assert torch.equal(x[:, 0], torch.from_numpy(arrays["test_images"]))


def test_n_bits_reduction(idx_root: Path) -> None:
    full = ImageDataModule("fashion_mnist", root=str(idx_root), val_size=20)
    low = ImageDataModule("fashion_mnist", root=str(idx_root), val_size=20, n_bits=3)
    full.setup()
    low.setup()
    x8, _ = all_batches(full.val_dataloader())
    x3, _ = all_batches(low.val_dataloader())
    check_batch(x3, torch.zeros(len(x3), dtype=torch.long), (1, 28, 28), n_bits=3)
    assert int(x3.max()) == 7
    assert torch.equal(x3, x8 >> 5)


def test_split_is_deterministic_in_seed(idx_root: Path) -> None:
    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = ImageDataModule("fashion_mnist", root=str(idx_root), val_size=30, seed=seed)
        dm.setup()
        return dm.train_set.indices, dm.val_set.indices

    train, val = split(0)
    assert sorted(train + val) == list(range(120))
    assert split(0) == (train, val)
    assert set(split(1)[1]) != set(val)


def test_train_subset_limits_all_splits(idx_root: Path) -> None:
    dm = ImageDataModule("fashion_mnist", root=str(idx_root), val_size=20, train_subset=50)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 10)
    full = ImageDataModule("fashion_mnist", root=str(idx_root), val_size=20)
    full.setup()
    assert dm.train_set.indices == full.train_set.indices[:50]


# ----------------------------------------------------------------------------- CIFAR / ImageNet


def test_cifar10_python_batches(tmp_path: Path) -> None:
    test = make_cifar10(tmp_path)
    dm = ImageDataModule("cifar10", root=str(tmp_path), val_size=10, batch_size=8)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (90, 10, 20)
    check_batch(*next(iter(dm.train_dataloader())), (3, 32, 32))
    x, y = all_batches(dm.test_dataloader())
    assert torch.equal(x.reshape(len(x), -1), torch.from_numpy(test["data"]))
    assert torch.equal(x[:, 1], torch.from_numpy(test["data"][:, 1024:2048]).view(-1, 32, 32))
    assert torch.equal(y, torch.from_numpy(test["labels"]))


def test_corrupt_cifar_batch_names_the_file(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_3"):
        ImageDataModule("cifar10", root=str(tmp_path), val_size=10).setup()


def test_imagenet32_npz(tmp_path: Path) -> None:
    val = make_imagenet(tmp_path / "Imagenet32_val_npz", 32)
    make_imagenet(tmp_path / "Imagenet32_train_npz", 32)
    (tmp_path / "Imagenet32_train_npz" / "val_data.npz").unlink()
    dm = ImageDataModule("imagenet32", root=str(tmp_path), val_size=16, batch_size=16)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (64, 16, 12)
    check_batch(*next(iter(dm.train_dataloader())), (3, 32, 32))
    x, y = all_batches(dm.test_dataloader())
    assert torch.equal(x.reshape(len(x), -1), torch.from_numpy(val))
    expected = np.load(tmp_path / "Imagenet32_val_npz" / "val_data.npz")["labels"] - 1
    assert torch.equal(y, torch.from_numpy(expected))
    assert int(y.min()) >= 0 and int(y.max()) <= 999


def test_imagenet_wrong_resolution_names_the_file(tmp_path: Path) -> None:
    make_imagenet(tmp_path, 32)
    with pytest.raises(ValueError, match="train_data_batch_1.npz.*imagenet64"):
        ImageDataModule("imagenet64", root=str(tmp_path), val_size=8).setup()


# ----------------------------------------------------------------------------- image files


def test_image_folder_classes_skips_corrupt_files(tmp_path: Path) -> None:
    broken = make_image_folder(tmp_path / "pics")
    dm = ImageDataModule("image_folder", root=str(tmp_path / "pics"), image_size=12, val_size=2,
                         batch_size=2)  # fmt: skip
    assert dm.num_classes is None
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable .*broken\.jpg"):
        dm.setup()
    assert dm.num_classes == 2
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (5, 2, 1)
    all_files = dm.train_set.dataset.files
    assert len(all_files) == 8 and broken not in all_files
    x, y = all_batches(dm.train_dataloader())
    check_batch(x, y, (3, 12, 12))
    assert set(all_batches(dm.val_dataloader())[1].tolist()) <= {0, 1}
    labels = dict(zip(all_files, dm.train_set.dataset.labels.tolist(), strict=True))
    assert labels[tmp_path / "pics" / "cats" / "cats_0.png"] == 0
    assert labels[tmp_path / "pics" / "dogs" / "dogs_3.jpg"] == 1


def test_image_folder_grayscale_resize_and_center_crop(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    pixels = np.zeros((10, 30), dtype=np.uint8)
    pixels[:, 10:20] = 200  # the center square is bright, the sides dark
    for i in range(3):
        Image.fromarray(pixels, "L").save(tmp_path / "flat" / f"{i}.png")
    dm = ImageDataModule("image_folder", root=str(tmp_path / "flat"), image_size=5, channels=1,
                         val_size=1, batch_size=1)  # fmt: skip
    dm.setup()
    assert dm.num_classes == 0
    x, y = all_batches(dm.train_dataloader())
    check_batch(x, y, (1, 5, 5))
    assert int(x.min()) > 150 and y.eq(0).all()  # the dark sides were cropped away


def test_all_images_unreadable(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dm = ImageDataModule("image_folder", root=str(tmp_path / "bad"), val_size=0)
    with pytest.raises(DatasetNotFoundError, match="none of the 1 image files"):
        dm.setup()


@pytest.mark.parametrize("with_partition", [True, False])
def test_celeba_folder(tmp_path: Path, with_partition: bool) -> None:
    make_celeba(tmp_path, n=12, with_partition=with_partition)
    dm = ImageDataModule("celeba", root=str(tmp_path), image_size=16, val_size=2, batch_size=4)
    dm.setup()
    # official split: 9 train+valid / 3 test; carved: 1/10 of 12 -> 1 test image
    sizes = (7, 2, 3) if with_partition else (9, 2, 1)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == sizes
    x, y = all_batches(dm.test_dataloader())
    check_batch(x, y, (3, 16, 16))
    assert y.eq(0).all()
    # the ramp runs left to right, so the crop keeps a left-dark / right-bright image
    assert (x[..., -1].float().mean() - x[..., 0].float().mean()) > 50


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_labeled() -> None:
    def load(seed: int) -> ImageDataModule:
        dm = ImageDataModule("synthetic", val_size=256, seed=seed, channels=3, image_size=8)
        dm.setup()
        return dm

    a, b, c = load(0), load(0), load(1)
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (1792, 256, 256)
    xa, ya = all_batches(a.test_dataloader())
    xb, yb = all_batches(b.test_dataloader())
    xc, _ = all_batches(c.test_dataloader())
    check_batch(xa, ya, (3, 8, 8))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    assert set(ya.tolist()) == {0, 1, 2, 3}
    quadrant_sums = xa.float().sum(1).unfold(1, 4, 4).unfold(2, 4, 4).sum((-1, -2))
    assert torch.equal(ya, quadrant_sums.flatten(1).argmax(1))
    assert xa.float().std() > 10


def test_hflip_only_on_train() -> None:
    kwargs = {"name": "synthetic", "val_size": 64, "train_subset": 256, "batch_size": 256}
    plain, flipping = ImageDataModule(**kwargs), ImageDataModule(hflip=True, **kwargs)
    plain.setup()
    flipping.setup()
    for loader in ("val_dataloader", "test_dataloader"):
        assert torch.equal(
            all_batches(getattr(plain, loader)())[0], all_batches(getattr(flipping, loader)())[0]
        )
    originals = split_images(flipping.train_set)
    as_is = {bytes(img.numpy()) for img in originals}
    mirrored = {bytes(img.flip(-1).numpy()) for img in originals}
    torch.manual_seed(0)
    x, _ = all_batches(flipping.train_dataloader())
    assert len(x) == 256
    kinds = [(bytes(img.numpy()) in as_is, bytes(img.numpy()) in mirrored) for img in x]
    assert all(a or m for a, m in kinds)
    flipped = sum(m and not a for a, m in kinds)
    assert 64 < flipped < 192


def test_train_loader_shuffles_val_does_not() -> None:
    dm = ImageDataModule("synthetic", val_size=64, batch_size=32, train_subset=320)
    dm.setup()
    torch.manual_seed(0)
    first = next(iter(dm.train_dataloader()))[0]
    assert not torch.equal(first, split_images(dm.train_set)[:32])
    assert torch.equal(all_batches(dm.val_dataloader())[0], split_images(dm.val_set))
    assert len(dm.val_dataloader()) == 2  # 64 val images (320 // 5) in batches of 32


def test_worker_processes() -> None:
    dm = ImageDataModule("synthetic", val_size=64, batch_size=32, num_workers=1, n_bits=4)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    x, y = next(iter(loader))
    check_batch(x, y, (1, 16, 16), n_bits=4)


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not (FASHION_MNIST / IDX_NAMES["train_images"]).exists(),
    reason=f"no real Fashion-MNIST in {FASHION_MNIST}: apt-get install dataset-fashion-mnist",
)
def test_real_fashion_mnist() -> None:
    dm = ImageDataModule("fashion_mnist", n_bits=5, batch_size=128)
    assert dm.root == FASHION_MNIST
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 60000
    assert (len(dm.val_set), len(dm.test_set)) == (5000, 10000)
    for i, (x, y) in enumerate(dm.train_dataloader()):
        check_batch(x, y, (1, 28, 28), n_bits=5)
        assert int(x.max()) == 31 and set(y.tolist()) <= set(range(10))
        if i == 2:
            break
    x, y = next(iter(dm.test_dataloader()))
    assert len(x) == 128 and len(set(y.tolist())) == 10
