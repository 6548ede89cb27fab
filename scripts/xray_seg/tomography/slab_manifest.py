"""Build a MONAI datalist (manifest) for 3D volumes: slabs of one volume, or whole volumes.

    xray-seg manifest volumes --dataset_dir DATASET_DIR --output_file data_manifests/NAME.json
        [--images images] [--labels labels] [--val_fraction 0.1]
        [--test_fraction 0.2] [--gap 8] [--seed 0]

A tomography experiment often yields one large volume (or one stack of 2D slices).
It is split into disjoint slabs along z: training, then validation, then testing,
with ``gap`` unused slices between neighbours so that a network looking at a few
slices around a voxel never sees the slices it will be scored on. Each item names
the volume and its half-open slice range, ``{"image", "label", "slices": [start, stop]}``;
``xray_seg.tomography.volume_io.read_volume`` reads only that range.

When ``images`` holds several volume files (NIfTI, NRRD, MHA, TIFF stacks) with
same-named label volumes in ``labels``, the volumes themselves are split, seeded.

Paths are relative to DATASET_DIR, as in ``xray_seg.chest.manifest``. Every volume is
opened and checked (format, dtype, image/label shape) before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from xray_seg.shared.folders import visible_entries
from xray_seg.shared.splits import SPLITS, ManifestError
from xray_seg.tomography.volume_io import (
    SlabReader,
    VolumeError,
    check_same_shape,
    check_volume,
    is_volume_file,
    volume_format,
)

TOMOGRAPHY_LABELS = {"0": "pores", "1": "zirconia", "2": "nickel"}


def slab_ranges(depth: int, val_fraction: float, test_fraction: float, gap: int) -> dict[str, tuple[int, int]]:
    """Half-open z ranges of the training, validation and testing slabs of a ``depth``-slice volume.

    Validation and testing take their fractions of the slices left after the two gaps,
    rounded, at least one slice each; training gets the rest, at the top of the stack.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ManifestError(f"fractions must be in (0, 1) and sum below 1, got {val_fraction} and {test_fraction}")
    if gap < 0:
        raise ManifestError(f"gap must be >= 0 slices, got {gap}")
    usable = depth - 2 * gap
    n_val, n_test = (max(1, round(usable * f)) for f in (val_fraction, test_fraction))
    n_train = usable - n_val - n_test
    if n_train < 1:
        raise ManifestError(
            f"{depth} slices cannot hold training, validation and testing slabs with gaps of {gap} slices"
        )
    train = (0, n_train)
    val = (train[1] + gap, train[1] + gap + n_val)
    test = (val[1] + gap, depth)
    return {"training": train, "validation": val, "testing": test}


def _is_slice_folder(folder: Path, files: list[Path]) -> bool:
    """A folder of single-page TIFFs is one stack of slices; of multi-page TIFFs, several volumes.

    ``files`` are the folder's volume files; a folder of NIfTI/NRRD/MHA files is never a stack.
    """
    if not all(p.name.lower().endswith((".tif", ".tiff")) for p in files):
        return False  # a DICOM series has no volume suffixes, and medical files are volumes
    try:
        if volume_format(folder) == "dicom":
            return True
    except VolumeError as err:
        raise ManifestError(str(err)) from None
    try:
        with tifffile.TiffFile(files[0]) as tif:
            return len(tif.pages) == 1
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise ManifestError(f"{files[0]}: not a readable TIFF ({err})") from None


def _open(path: Path) -> SlabReader:
    try:
        return check_volume(path)
    except VolumeError as err:
        raise ManifestError(str(err)) from None


def _checked_pair(image: Path, label: Path) -> int:
    """Depth of an image volume whose label volume exists and has its shape."""
    if not label.exists():
        raise ManifestError(f"label volume {label} for image {image} does not exist")
    with _open(image) as img, _open(label) as lab:
        try:
            check_same_shape(img.meta, lab.meta)
        except VolumeError as err:
            raise ManifestError(str(err)) from None
        return img.meta.shape[0]


def build_slab_manifest(
    dataset_dir: str | os.PathLike,
    *,
    images: str = "images",
    labels: str = "labels",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    gap: int = 8,
    seed: int = 0,
    name: str | None = None,
    label_names: dict[str, str] | None = None,
) -> dict:
    """The manifest as a dict; see the module docstring."""
    root = Path(dataset_dir)
    image_dir, label_dir = root / images, root / labels
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise ManifestError(f"{folder} is not a folder")
    header = {
        "name": name or root.name,
        "tensorImageSize": "3D",
        "labels": label_names or TOMOGRAPHY_LABELS,
        "seed": seed,
    }
    volume_files = [p for p in visible_entries(image_dir, ManifestError) if is_volume_file(p)]
    stack = not volume_files or _is_slice_folder(image_dir, volume_files)
    if stack or len(volume_files) == 1:
        image = image_dir if stack else volume_files[0]
        label = label_dir if stack else label_dir / image.name
        depth = _checked_pair(image, label)
        ranges = slab_ranges(depth, val_fraction, test_fraction, gap)
        rel = {"image": str(image.relative_to(root)), "label": str(label.relative_to(root))}
        splits = {split: [{**rel, "slices": list(ranges[split])}] for split in SPLITS}
        description = (
            f"one {depth}-slice volume (image {rel['image']}, label {rel['label']}) split along z into slabs "
            + ", ".join(f"{s} {a}..{b - 1}" for s, (a, b) in ranges.items())
            + f" (0-based, inclusive), {gap} unused slices between neighbours"
        )
    else:
        for image in volume_files:
            _checked_pair(image, label_dir / image.name)
        order = [volume_files[i] for i in np.random.default_rng(seed).permutation(len(volume_files))]
        n = len(order)
        n_test, n_val = (max(1, round(n * f)) for f in (test_fraction, val_fraction))
        if n - n_test - n_val < 1:
            raise ManifestError(f"{n} volumes in {image_dir} are too few for three splits")
        items = [{"image": str(p.relative_to(root)), "label": str((label_dir / p.name).relative_to(root))} for p in order]
        splits = {
            "testing": sorted(items[:n_test], key=lambda e: e["image"]),
            "validation": sorted(items[n_test:n_test + n_val], key=lambda e: e["image"]),
            "training": sorted(items[n_test + n_val:], key=lambda e: e["image"]),
        }
        description = f"{n} volumes from {images}/ with same-named labels in {labels}/, seed {seed}"
    return {
        **header,
        "description": description,
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["testing"]),
        **splits,
    }
