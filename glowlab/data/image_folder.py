"""A folder of image files, decoded lazily with PIL."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# PIL errors for unreadable files: OSError (incl. UnidentifiedImageError, truncation),
# SyntaxError (broken PNG chunks), ValueError and DecompressionBombError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def scan_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``root`` (recursive, sorted, hidden entries skipped) with labels.

    When ``root`` has image-holding subfolders, the class of a file is its first-level subfolder
    (files lying directly in ``root`` then form the class ``"."``); otherwise every label is 0
    and the class list is empty. Returns ``(files, labels, class_names)``.
    """
    files = _image_files(root)
    keys = [rel.parts[0] if len(rel.parts) > 1 else "." for rel in files]
    class_names = sorted(set(keys)) if any(key != "." for key in keys) else []
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index.get(key, 0) for key in keys]
    return [root / rel for rel in files], labels, class_names


def _image_files(root: Path) -> list[Path]:
    """Sorted paths, relative to ``root``, of the image files below it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        found += [
            Path(dirpath, name).relative_to(root)
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return sorted(found)


def find_unreadable(files: Sequence[Path], mode: str, size: int) -> list[Path]:
    """The files PIL cannot fully decode (JPEGs are decoded at reduced scale to save time)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(lambda path: _decodes(path, mode, size), files))
    return [path for path, good in zip(files, ok, strict=True) if not good]


def _decodes(path: Path, mode: str, size: int) -> bool:
    try:
        with Image.open(path) as img:
            img.draft(mode, (size, size))
            img.load()
    except _DECODE_ERRORS:
        return False
    return True


class ImageFileDataset(Dataset):
    """Item ``i`` -> ``(x, y)``: ``x`` uint8 ``(C, S, S)`` decoded from ``files[i]``, ``y`` long.

    Images are converted to RGB (``channels=3``) or L (``channels=1``). With ``crop`` set, a
    centered ``crop x crop`` square is cut first and resized to ``S x S`` (CelebA style);
    otherwise the shorter side is resized to ``S`` and the center ``S x S`` is kept.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        image_size: int,
        channels: int,
        crop: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 for image files, got {channels}")
        self.files = list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.image_size = image_size
        self.mode = "L" if channels == 1 else "RGB"
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                pixels = np.array(self._transform(img.convert(self.mode)))
        except _DECODE_ERRORS as err:
            raise OSError(f"cannot decode image {path}: {err}") from err
        x = torch.from_numpy(pixels)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        return x, self.labels[index]

    def _transform(self, img: Image.Image) -> Image.Image:
        size = (self.image_size, self.image_size)
        if self.crop is None:
            return ImageOps.fit(img, size, method=Image.Resampling.BICUBIC)
        left, top = (img.width - self.crop) // 2, (img.height - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        return img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)
