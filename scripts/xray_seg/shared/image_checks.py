"""Find and decode 2D image files, failing with messages that name the file.

Shared by the manifest builder and by inference, which validate input folders
before any slow work starts.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from xray_seg.shared.folders import visible_entries
from xray_seg.shared.integrity import gzip_problem, non_finite_count, non_finite_message
from xray_seg.shared.machine import available_memory, gib

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")
MAX_CHANNELS = 4  # RGBA; a longer last axis means a volume, not a 2D image
# The networks halve the image four times (16 px per side at the bottom); a smaller
# image is a thumbnail or a mistake, not a radiograph.
MIN_SIDE = 16
# Header check before decoding. The largest radiography detectors give about 20
# megapixels (43 x 43 cm at 0.1 mm); 8000 x 8000 (64 MP) was tried and works. 100 MP
# (10000 x 10000) leaves room for stitched long-leg or full-spine images and refuses
# decompression bombs such as a 60000 x 60000 PNG header (3.6 gigapixels, 29 GB as
# float64) before anything is decoded. PIL itself refuses above 179 MP on opening.
MAX_PIXELS = 100_000_000
# Bytes per input pixel that inference holds at the input's own size: the decoded image,
# float32 copies for scaling and inversion, and float32 probabilities of up to five
# classes plus their masks. Refused when above the memory available now.
BYTES_PER_PIXEL = 64


class ImageReadError(ValueError):
    """A file or folder that cannot be used as 2D image input."""


def image_suffix(path: str | os.PathLike) -> str | None:
    """The supported suffix of ``path`` in lower case (".nii.gz" counts as one), else None."""
    name = Path(path).name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def image_stem(path: str | os.PathLike) -> str:
    """The file name without its image suffix: "a.nii.gz" -> "a"."""
    name = Path(path).name
    suffix = image_suffix(path)
    return name[: -len(suffix)] if suffix else Path(path).stem


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Sorted supported image files directly in ``folder``, hidden files skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    files = [p for p in visible_entries(folder, ImageReadError) if p.is_file()]
    images = [p for p in files if image_suffix(p)]
    if not images:
        others = f"; found {len(files)} other file(s), e.g. {files[0].name}" if files else ""
        raise ImageReadError(
            f"{folder}: no supported images ({' '.join(SUPPORTED_SUFFIXES)}){others}"
        )
    return images


class _Refused(Exception):
    """A file that was read fine but is not a usable 2D image; its message is the whole problem."""


def _check_header_size(height: int, width: int) -> None:
    """Refuse an image too small to segment, or too large to decode, from its header's size."""
    if min(height, width) < MIN_SIDE:
        raise _Refused(f"image is {height}x{width} pixels; at least {MIN_SIDE} pixels per side are needed")
    pixels = height * width
    if pixels > MAX_PIXELS:
        raise _Refused(f"image is {height}x{width} pixels ({pixels / 1e6:.0f} megapixels), above the limit of "
                       f"{MAX_PIXELS / 1e6:.0f} megapixels; not decoded (downsample it first)")
    need, free = pixels * BYTES_PER_PIXEL, available_memory()
    if free is not None and need > free:
        raise _Refused(f"image is {height}x{width} pixels and needs about {gib(need)} to segment, but only "
                       f"{gib(free)} of memory is available; not decoded")


def _decode(path: Path, suffix: str) -> np.ndarray:
    # Imported lazily: each reader is only needed for its own formats.
    if suffix in (".nii", ".nii.gz"):
        import nibabel

        image = nibabel.load(path)
        # NIfTI has no colour axis: an axis beyond the first two longer than 1 holds slices.
        if len(image.shape) < 2 or any(n != 1 for n in image.shape[2:]):
            raise _Refused(f"NIfTI of shape {'x'.join(map(str, image.shape))} is not one 2D image "
                           "(a volume of several slices?)")
        _check_header_size(*image.shape[:2])
        if suffix == ".nii.gz" and (problem := gzip_problem(path)):
            raise _Refused(problem)
        return np.squeeze(image.get_fdata())
    if suffix == ".dcm":
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(getattr(header, "NumberOfFrames", 1) or 1)
        if frames > 1:
            # pixel_array would be frames x H x W, indistinguishable from H x W x C.
            raise _Refused(f"multi-frame DICOM ({frames} frames); expected one 2D image")
        _check_header_size(int(header.Rows), int(header.Columns))
        return pydicom.dcmread(path).pixel_array
    from PIL import Image

    try:
        with warnings.catch_warnings():  # the size is checked below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as err:
        raise _Refused(f"image too large to decode: {err}") from None
    with im:
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise _Refused(f"{im.format} holds {frames} pages or frames; expected one 2D image "
                           "(a 2D bundle would segment only the first)")
        _check_header_size(im.height, im.width)
        im.load()  # decodes every pixel, so truncated files fail here
        return np.asarray(im)


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` into an H x W or H x W x C array, in its reader's own axis order.

    Raises ImageReadError naming the file for unsupported, unreadable or non-2D files.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix is None:
        raise ImageReadError(f"{path}: unsupported file type; expected one of {' '.join(SUPPORTED_SUFFIXES)}")
    try:
        array = _decode(path, suffix)
    except _Refused as e:
        raise ImageReadError(f"{path}: {e}") from None
    except Exception as e:  # every reader has its own exception types; all mean "unreadable"
        raise ImageReadError(f"{path}: cannot read image: {type(e).__name__}: {e}") from e
    if array.size == 0:
        raise ImageReadError(f"{path}: image is empty (shape {array.shape})")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] <= MAX_CHANNELS)):
        raise ImageReadError(f"{path}: expected a 2D image (H x W or H x W x C), got shape {array.shape}")
    if min(array.shape[:2]) < MIN_SIDE:  # formats whose header was not checked
        raise ImageReadError(f"{path}: image is {array.shape[0]}x{array.shape[1]} pixels; "
                             f"at least {MIN_SIDE} pixels per side are needed")
    if bad := non_finite_count(array):
        raise ImageReadError(f"{path}: {non_finite_message(bad, array.size)}")
    return array


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_problem(path: Path) -> str | None:
    """What is wrong with the chunks of a PNG file (cut short, damaged), or None.

    Every PNG chunk carries a CRC-32 of its bytes and the file ends with an IEND chunk,
    so walking the chunks finds a truncated or damaged file without inflating the
    pixels: a small fraction of the time of decoding it (which inference does anyway).
    """
    data = memoryview(path.read_bytes())
    if data[:8] != _PNG_SIGNATURE:
        return "not a PNG stream"
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8]).decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            return f"the file ends inside its {kind} chunk (truncated)"
        if zlib.crc32(data[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return f"its {kind} chunk is damaged (CRC mismatch)"
        if kind == "IEND":
            return None
        pos = end
    return "no IEND chunk (truncated)"


def check_image(path: str | os.PathLike) -> None:
    """Raise ImageReadError naming ``path`` if it cannot be segmented; decode only where needed.

    A PNG (by content, not name) is checked from its header (size, frames) and its chunk
    checksums: its pixels are integers, so there is nothing else to find by decoding, and
    inference decodes it once, in the pipeline. Every other format is decoded here
    (``read_image_array``): JPEG has no checksums, and float TIFF, NIfTI and DICOM pixels
    are checked for NaN and infinity.
    """
    path = Path(path)
    if image_suffix(path) == ".png":
        from PIL import Image

        try:
            with warnings.catch_warnings():  # the size is checked below, against our own limit
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)  # reads the header only
            with im:
                is_png, frames, height, width = im.format == "PNG", getattr(im, "n_frames", 1), im.height, im.width
        except Image.DecompressionBombError as err:
            raise ImageReadError(f"{path}: image too large to decode: {err}") from None
        except Exception:  # not an image at all; the full reader gives the usual message
            return _raise_from_decode(path)
        if is_png:
            try:
                if frames > 1:
                    raise _Refused(f"PNG holds {frames} pages or frames; expected one 2D image "
                                   "(a 2D bundle would segment only the first)")
                _check_header_size(height, width)
            except _Refused as e:
                raise ImageReadError(f"{path}: {e}") from None
            if problem := _png_problem(path):
                raise ImageReadError(f"{path}: cannot read image: {problem}")
            return None
    read_image_array(path)
    return None


def _raise_from_decode(path: Path) -> None:
    read_image_array(path)  # raises with the reader's own words
    raise ImageReadError(f"{path}: cannot read image")  # a reader that failed once and not twice


def check_readable(paths: Iterable[str | os.PathLike]) -> None:
    """Check every file (``check_image``) and raise one ImageReadError listing all that fail."""
    paths = list(paths)
    problems = []
    for path in paths:
        try:
            check_image(path)
        except ImageReadError as e:
            problems.append(str(e))
    if problems:  # the first line names a file and its problem; the others follow
        count = f"{len(problems)} of {len(paths)} image files cannot be read; " if len(problems) > 1 else ""
        raise ImageReadError(count + "\n  ".join(problems))
