"""Which model kind an image is for: 2D radiograph or 3D volume, from its name (and, for
NIfTI, its header)."""

from __future__ import annotations

import os
from pathlib import Path

# What the datastore lists (MONAI Label's MONAI_LABEL_DATASTORE_FILE_EXT).
IMAGE_2D = (".png", ".jpg", ".jpeg", ".dcm")
VOLUME = (".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".tiff")
EXTENSIONS = tuple(f"*{ext}" for ext in (*IMAGE_2D, *VOLUME))


def suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def dimension(path: str | os.PathLike) -> int | None:
    """2 for a radiograph, 3 for a volume, None for a file of neither kind.

    NIfTI can hold either: a file with one slice (or two axes) is 2D.
    """
    ext = suffix(path)
    if ext in IMAGE_2D:
        return 2
    if ext in (".nii", ".nii.gz"):
        import nibabel

        try:
            shape = nibabel.load(str(path)).shape
        except Exception:  # unreadable: let the reader name the problem later
            return 3
        return 2 if len(shape) == 2 or (len(shape) >= 3 and 1 in shape[2:3]) else 3
    return 3 if ext in VOLUME else None
