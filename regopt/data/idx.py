"""Read and write IDX files, the format of MNIST and Fashion-MNIST.

Layout (big-endian, http://yann.lecun.com/exdb/mnist/):

    bytes 0-1   0x00 0x00
    byte  2     dtype code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                            0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    then        d sizes, each a big-endian uint32
    then        prod(sizes) items of the dtype, big-endian, row-major

The file may be gzip-compressed; that is detected from the gzip magic bytes (1f 8b), not from
the name. The data size must match the header exactly: a short file is "truncated", a long one
has "trailing bytes", both are errors.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from regopt.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# dtype code -> big-endian numpy dtype, as the IDX format stores items.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in IDX_DTYPES.items()}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a native-byte-order, writable numpy array.

    Raises DataError naming the file for: a missing file, a bad gzip stream, a bad magic number,
    an unknown dtype code, a truncated file or trailing bytes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    if data.startswith(GZIP_MAGIC):
        data = _gunzip(data, path)
    elif path.suffix == ".gz":
        # Say so now: the magic-number error below would hide that the name promises gzip.
        _check_magic(data, f"{path} (named .gz but not gzip-compressed)")
    return parse_idx(data, source=str(path))


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file; `source` names it in error messages."""
    dtype, ndim = _check_magic(data, source)
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"{source}: truncated header: expected {header_size} bytes for {ndim} dimensions, "
            f"found {len(data)}"
        )
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header_size
    if found < expected:
        raise DataError(f"{source}: truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        raise DataError(
            f"{source}: trailing bytes: expected {expected} bytes of data, found {found}"
        )
    items = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    # astype copies: the result is writable and in native byte order (torch.from_numpy needs both).
    return items.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz; returns the path.

    The dtype must be one the format has (uint8, int8, int16, int32, float32, float64).
    """
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise DataError(
            f"{path}: cannot write dtype {array.dtype} with {array.ndim} dimensions as IDX"
        )
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def _check_magic(data: bytes, source: str) -> tuple[np.dtype, int]:
    """Validate the 4-byte magic number; return (big-endian item dtype, number of dimensions)."""
    if len(data) < 4:
        raise DataError(f"{source}: not an IDX file: {len(data)} bytes, too short for a header")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{source}: not an IDX file: bad magic number 0x{data[:4].hex()} "
            "(expected 0x0000 followed by a dtype code and the number of dimensions)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{known:02X}" for known in IDX_DTYPES)
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    return IDX_DTYPES[code], ndim


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise DataError(f"{path}: bad gzip stream: {error}") from None
