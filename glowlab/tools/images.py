"""Reading user image files into the integer images a model takes.

Images whose size differs from the model's are resized like the ``image_folder`` dataset does
(shorter side scaled to the model's side, bicubic, then center-cropped) and images in another
color mode are converted (to ``L`` for one channel, ``RGB`` for three; alpha is dropped); each
with one warning counting and listing the files, and one more for images smaller than the
model's size (upscaled). 16-bit images (``I;16``) are scaled exactly (``x >> (16 - n_bits)``),
never clipped; 32-bit integer or float images are refused. A file PIL cannot decode is an
error naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from glowlab.data.image_folder import (
    IMAGE_EXTENSIONS,
    UnsupportedModeError,
    is_16_bit,
    scan_image_folder,
    to_mode,
)

_MODES = {1: "L", 3: "RGB"}


def image_files(path: str | Path, option: str = "inputs") -> list[Path]:
    """``path`` itself if it is a file, else the image files below the folder (recursive,
    sorted). For ``glowlab-score``'s ``inputs``/``reference`` (``option``), which take a split
    too."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(
            f"{option}={path} does not exist; pass an image file, a folder of images or a "
            "split (train, val, test)"
        )
    files = scan_image_folder(path)[0]
    if not files:
        raise FileNotFoundError(
            f"{option}={path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "point it at a folder of images"
        )
    return files


def read_images(
    paths: Sequence[str | Path], image_shape: Sequence[int], n_bits: int = 8
) -> Tensor:
    """Decode ``paths`` into uint8 ``(N, C, H, W)`` in ``[0, 2^n_bits)`` for ``image_shape``.

    Resizes and converts with a warning (see the module docstring); raises ``ValueError``
    naming the first file that cannot be decoded.
    """
    if not paths:
        raise ValueError("no image files to read")
    channels, height, width = (int(s) for s in image_shape)
    if channels not in _MODES:
        raise ValueError(
            f"image files give 1 (L) or 3 (RGB) channels; this model takes {channels}"
        )
    mode, images = _MODES[channels], []
    notes: dict[str, list[str]] = {"converted": [], "resized": [], "upscaled": [], "16-bit": []}
    for path in map(Path, paths):
        if path.is_dir():
            raise ValueError(_folder_message(path))
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            with Image.open(path) as img:
                img.load()
                pixels = _pixels(img, path, mode, (width, height), notes)
        except UnsupportedModeError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot read image file {path}: {error}") from None
        images.append(torch.from_numpy(pixels).reshape(height, width, channels))
    _warn(notes["converted"], f"converted to {mode}")
    _warn(notes["resized"], f"resized to {width}x{height} (scaled, center-cropped)")
    _warn(notes["upscaled"], f"smaller than {width}x{height}, upscaled (bicubic, center-cropped)")
    _warn(notes["16-bit"], f"16-bit, scaled exactly to {n_bits} bits (x >> {16 - n_bits})")
    x = torch.stack(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return x >> (8 - n_bits)


def _folder_message(path: Path) -> str:
    """Why folder ``path`` is not an image file, with the first image inside as the fix."""
    inside = scan_image_folder(path)[0]
    hint = f"e.g. {inside[0]}" if inside else "it holds no image files"
    return f"{path} is a folder, not an image file; pass one image file ({hint})"


def _pixels(
    img: Image.Image, path: Path, mode: str, size: tuple[int, int], notes: dict[str, list[str]]
) -> np.ndarray:
    """``img`` as uint8 ``(H, W[, C])`` pixels of ``mode`` and ``size``, noting what changed."""
    if is_16_bit(img):
        notes["16-bit"].append(f"{path.name} ({img.mode})")
    elif img.mode != mode:
        notes["converted"].append(f"{path.name} ({img.mode})")
    img = to_mode(img, mode, path)
    if img.size != size:
        smaller = img.width < size[0] or img.height < size[1]
        notes["upscaled" if smaller else "resized"].append(
            f"{path.name} ({img.width}x{img.height})"
        )
        img = ImageOps.fit(img, size, method=Image.Resampling.BICUBIC)
    return np.array(img, dtype=np.uint8)


def _warn(names: list[str], what: str) -> None:
    if names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        warnings.warn(f"{len(names)} image file(s) {what}: {shown}", stacklevel=3)
