"""Integrity checks that readers skip: a gzip stream's checksum, non-finite pixel values."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

_CHUNK = 1 << 22


def gzip_problem(path: str | os.PathLike) -> str | None:
    """Why the gzip file ``path`` is damaged, or None when it is whole.

    Decompresses the whole stream in chunks (memory stays small) so that gzip's CRC-32
    and length trailer are checked: readers that stop after the bytes they need
    (nibabel, ITK) never look at them and segment a damaged file without a word.
    """
    try:
        with gzip.open(path, "rb") as f:
            while f.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        return f"damaged gzip data ({type(err).__name__}: {err})"
    return None


def non_finite_in_file(path: str | os.PathLike, offset: int, dtype: np.dtype, compressed: bool) -> int:
    """Non-finite values among the ``dtype`` values stored from byte ``offset`` of ``path`` to its
    end (raw, or inside a gzip stream), read in chunks: memory stays small. For a gzip
    file the whole stream is read, so its checksum is verified too (errors as ``gzip``'s)."""
    dtype = np.dtype(dtype)
    count, carry = 0, b""
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK):
            chunk = carry + chunk
            usable = len(chunk) - len(chunk) % dtype.itemsize
            count += non_finite_count(np.frombuffer(chunk[:usable], dtype))
            carry = chunk[usable:]
    return count


def non_finite_count(array: np.ndarray) -> int:
    """Number of NaN or infinite values (0 for integer arrays, which cannot hold them)."""
    if not np.issubdtype(array.dtype, np.inexact):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


# Non-finite pixels are refused, not repaired. A NaN or Inf in an X-ray image or volume
# means a failed reconstruction, a detector fault or a bad conversion; replacing it by
# the image's minimum would segment a damaged input as if it were whole (the reported
# failure: an empty 2D mask, a 3D result agreeing with the clean volume on 47% of
# voxels), and a silent wrong answer is worse than a refused run.
def non_finite_message(count: int, total: int, where: str = "") -> str:
    return (f"{count} of {total} pixel values{where} are NaN or infinite; "
            "refused rather than guessed (repair or re-export the image)")
