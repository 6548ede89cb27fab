"""Find and decode 2D image files, failing with messages that name the file.

Shared by the manifest builder and by inference, which validate input folders
before any slow work starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")
MAX_CHANNELS = 4  # RGBA; a longer last axis means a volume, not a 2D image


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
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if image_suffix(p)]
    if not images:
        others = f"; found {len(files)} other file(s), e.g. {files[0].name}" if files else ""
        raise ImageReadError(
            f"{folder}: no supported images ({' '.join(SUPPORTED_SUFFIXES)}){others}"
        )
    return images


def _decode(path: Path, suffix: str) -> np.ndarray:
    # Imported lazily: each reader is only needed for its own formats.
    if suffix in (".nii", ".nii.gz"):
        import nibabel

        return np.squeeze(nibabel.load(path).get_fdata())
    if suffix == ".dcm":
        import pydicom

        ds = pydicom.dcmread(path)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames > 1:
            # pixel_array would be frames x H x W, indistinguishable from H x W x C.
            raise ValueError(f"multi-frame DICOM ({frames} frames); expected one 2D image")
        return ds.pixel_array
    from PIL import Image

    with Image.open(path) as im:
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
    except Exception as e:  # every reader has its own exception types; all mean "unreadable"
        raise ImageReadError(f"{path}: cannot read image: {type(e).__name__}: {e}") from e
    if array.size == 0:
        raise ImageReadError(f"{path}: image is empty (shape {array.shape})")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] <= MAX_CHANNELS)):
        raise ImageReadError(f"{path}: expected a 2D image (H x W or H x W x C), got shape {array.shape}")
    return array


def check_readable(paths: Iterable[str | os.PathLike]) -> None:
    """Decode every file and raise one ImageReadError listing all that fail."""
    paths = list(paths)
    problems = []
    for path in paths:
        try:
            read_image_array(path)
        except ImageReadError as e:
            problems.append(str(e))
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ImageReadError(f"{len(problems)} of {len(paths)} image file(s) cannot be read:\n{lines}")
