"""A folder of image files, decoded lazily with PIL."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class UnsupportedModeError(ValueError):
    """An image's pixel mode (32-bit integer or float) has no exact map to 8-bit pixels."""


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


@dataclass(frozen=True)
class FileInfo:
    """What scanning one image file found: decodable or not, its size, PIL mode, whether its
    pixels are 16-bit and whether they map exactly to 8 bits (see `check_mode`)."""

    path: Path
    readable: bool
    size: tuple[int, int] = (0, 0)
    mode: str = ""
    sixteen_bit: bool = False
    exact: bool = True


def scan_files(files: Sequence[Path], mode: str, size: int) -> list[FileInfo]:
    """Decode every file once (JPEGs at reduced scale to save time), recording its size and
    mode; a file PIL cannot fully decode is ``readable=False``."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda path: _scan(path, mode, size), files))


def _scan(path: Path, mode: str, size: int) -> FileInfo:
    try:
        with Image.open(path) as img:
            found = FileInfo(path, True, img.size, img.mode, is_16_bit(img), maps_exactly(img))
            img.draft(mode, (size, size))
            img.load()
    except _DECODE_ERRORS:
        return FileInfo(path, False)
    return found


GREY_MODES = frozenset({"1", "L", "LA", "La", "I"} | SIXTEEN_BIT_MODES)
"""PIL modes with one colour channel (alpha aside)."""
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def mode_conversion(infos: Sequence[FileInfo], mode: str) -> tuple[str, list[str]]:
    """What reading the images of ``infos`` as ``mode`` (``L`` or ``RGB``) changes, as
    ``(sentence, ["<path> (<mode>)", ...])`` for the files converted; ``("", [])`` when none is.

    The sentence follows "<n> of <total> images under <root>": the target mode, the count per
    source mode, and what the user may want instead (``data.channels``). 16-bit images are
    left to their own warning, as in ``glowlab.tools.images``.
    """
    converted = [i for i in infos if i.mode != mode and not i.sixteen_bit]
    if not converted:
        return "", []
    counts = Counter(i.mode for i in converted)
    parts = [", ".join(f"{n} from {m}" for m, n in sorted(counts.items()))]
    if counts.keys() & ALPHA_MODES:
        parts.append("transparency dropped")
    if mode == "L" and counts.keys() - GREY_MODES:
        parts.append("their colour is lost; data.channels=3 keeps it")
    elif mode == "RGB" and all(i.mode in GREY_MODES for i in infos):
        parts.append("every image is grey: data.channels=1 trains a one-channel model on them")
    sentence = f"are converted to {mode} ({'; '.join(parts)})"
    return sentence, [f"{i.path} ({i.mode})" for i in converted]


def is_16_bit(img: Image.Image) -> bool:
    """Whether ``img`` holds 16-bit integer pixels (``I;16*``, or mode ``I`` read from a PNG,
    which can only be 16-bit grayscale)."""
    return img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PNG")


def maps_exactly(img: Image.Image) -> bool:
    """False for 32-bit integer (``I``, not from a PNG) and float (``F``) pixels."""
    return img.mode not in ("I", "F") or is_16_bit(img)


def check_mode(img: Image.Image, path: Path | str) -> None:
    """Raise ``UnsupportedModeError`` for pixel modes with no exact map to 8-bit integers."""
    if not maps_exactly(img):
        kind = "32-bit integer" if img.mode == "I" else "32-bit float"
        raise UnsupportedModeError(
            f"{path} is a mode {img.mode!r} ({kind}) image, which has no exact map to "
            "8-bit pixels; save it as an 8- or 16-bit PNG"
        )


def to_mode(img: Image.Image, mode: str, path: Path | str = "image") -> Image.Image:
    """``img`` as an 8-bit ``mode`` (``L`` or ``RGB``) image. 16-bit pixels keep their top 8
    bits (``x >> 8``, exact: a later ``>> (8 - n_bits)`` gives ``x >> (16 - n_bits)``) instead
    of PIL's clipping to 255; modes with no exact map are refused (`check_mode`)."""
    check_mode(img, path)
    if is_16_bit(img):
        pixels = np.asarray(img).astype(np.int64)
        img = Image.fromarray((pixels >> 8).astype(np.uint8), "L")
    return img if img.mode == mode else img.convert(mode)


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
                pixels = np.array(self._resize(to_mode(img, self.mode, path)))
        except UnsupportedModeError:
            raise
        except _DECODE_ERRORS as err:
            raise OSError(f"cannot decode image {path}: {err}") from err
        x = torch.from_numpy(pixels)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        return x, self.labels[index]

    def _resize(self, img: Image.Image) -> Image.Image:
        size = (self.image_size, self.image_size)
        if self.crop is None:
            return ImageOps.fit(img, size, method=Image.Resampling.BICUBIC)
        left, top = (img.width - self.crop) // 2, (img.height - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        return img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)
