"""Reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian uint32
sizes, then the data in C order (big-endian for multi-byte types).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

_GZIP_MAGIC = b"\x1f\x8b"
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXFormatError(ValueError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (``.gz`` detected from its content) into a tensor of the header's shape.

    Raises `IDXFormatError` naming the file when it is not IDX, truncated or corrupt.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()!r})")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise IDXFormatError(f"{path}: IDX header declares 0 dimensions")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise IDXFormatError(f"{path} is truncated: the file ends inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = _DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - offset != expected:
        raise IDXFormatError(
            f"{path} is truncated or corrupt: its header declares shape {dims} "
            f"({expected} data bytes) but it holds {len(raw) - offset}; fetch the file again"
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=offset)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="))).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it starts with the gzip magic number."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise IDXFormatError(f"{path} is a truncated or corrupt gzip file ({err})") from err
