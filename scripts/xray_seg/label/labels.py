"""Labels as clients save them (label maps) -> what each bundle trains on.

Clients (3D Slicer, OHIF, CVAT, curl) send one label map per image with the values the
server's ``/info`` lists (``workspace.LABELS``). Fine-tuning converts them into a
training set in the run folder; the label maps in the datastore are never changed.

- cxr_lungs: a 0/1 lung mask. A 2D label map with values 0/1 is a lungs label; one
  with anatomy values (0..5) counts its right and left lung (1, 2) as lung.
- cxr_anatomy: five 0/1 structure masks (the network has one sigmoid channel per
  structure). Only label maps with anatomy values above 1 are used: a 0/1 map is a
  lungs label. **What a label map cannot say:** each pixel has one value, so where
  structures overlap it shows only the one on top (clavicle > heart > lung, as
  ``xray_seg.chest.anatomy.PRIORITY``); a lung pixel under a clavicle or behind the
  heart is lost from the lung mask. The fine-tune then teaches "not lung" there,
  which the original multi-label training did not. Send masks per structure
  (``cxr_anatomy`` manifests) to keep overlaps; the server takes label maps only.
- xray_tomography: class indices 0..n-1 (0 pores, 1 zirconia, 2 nickel). The label
  map has every phase as a segment (1 pores, 2 zirconia, 3 nickel, as ``/infer``
  returns), so it is shifted down by one. Every voxel must be labelled: 0 (no phase)
  is refused, since the network has no "unlabelled" class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from xray_seg.chest.anatomy import LABEL_VALUES, STRUCTURES, split_label_map
from xray_seg.shared.atomic import atomic_path
from xray_seg.tomography.volume_io import SlabReader, read_volume, write_volume

ANATOMY_VALUES = {0, *LABEL_VALUES.values()}
TOMOGRAPHY_PHASES = (1, 2, 3)


class LabelError(ValueError):
    """A label the server cannot train on; the message names the file and the problem."""


def load_2d(path: str | os.PathLike) -> np.ndarray:
    """A 2D image or label map as a (columns, rows) array, MONAI's layout (as the bundles load it).

    Palette PNGs keep their indices (a label map's values), not their colours.
    """
    from monai.transforms import LoadImage

    try:
        array = np.asarray(LoadImage(image_only=True)(str(path)))
    except Exception as e:  # MONAI wraps each reader's own error type
        raise LabelError(f"{Path(path).name}: cannot be read as an image ({e})") from None
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def label_map_2d(label_path: str | os.PathLike, image_path: str | os.PathLike) -> np.ndarray:
    """The client's label map, checked: one channel, whole numbers 0..5, the image's size."""
    name = Path(label_path).name
    label = load_2d(label_path)
    if label.ndim != 2:
        raise LabelError(f"{name}: a label map has one value per pixel, got shape {label.shape}")
    image_shape = load_2d(image_path).shape[:2]
    if label.shape != image_shape:
        raise LabelError(f"{name}: label size {label.shape[1]}x{label.shape[0]} differs from the image's "
                         f"{image_shape[1]}x{image_shape[0]} (width x height)")
    if not np.array_equal(label, np.round(label)):
        raise LabelError(f"{name}: a label map holds whole numbers, got fractional values")
    values = set(np.unique(label).astype(int).tolist())
    unknown = sorted(values - ANATOMY_VALUES)
    if unknown:
        raise LabelError(f"{name}: label values {unknown} are not labels of the chest models "
                         f"(0 background, 1 lung; or anatomy {dict(LABEL_VALUES)})")
    return label.astype(np.uint8)


def is_anatomy_map(label: np.ndarray) -> bool:
    return bool((label > 1).any())


def _write_mask(mask: np.ndarray, path: Path) -> str:
    """A (columns, rows) 0/1 mask as a 0/255 PNG (rows x columns on disk)."""
    with atomic_path(path) as tmp:
        Image.fromarray((mask.T > 0).astype(np.uint8) * 255).save(tmp, format="PNG")
    return str(path)


def lungs_item(image: str, label: str, out_dir: Path, case: str) -> dict:
    """A cxr_lungs training item from a lungs (0/1) or anatomy (0..5) label map."""
    label_map = label_map_2d(label, image)
    lung = np.isin(label_map, (LABEL_VALUES["right_lung"], LABEL_VALUES["left_lung"]))
    return {"image": str(image), "label": _write_mask(lung, out_dir / f"{case}_lung.png")}


def anatomy_item(image: str, label: str, out_dir: Path, case: str) -> dict | None:
    """A cxr_anatomy training item (five structure masks), or None for a lungs-only (0/1) label."""
    label_map = label_map_2d(label, image)
    if not is_anatomy_map(label_map):
        return None
    channels = split_label_map(label_map)
    return {"image": str(image),
            "label": [_write_mask(channels[i], out_dir / f"{case}_{s}.png") for i, s in enumerate(STRUCTURES)]}


def tomography_item(image: str, label: str, out_dir: Path, case: str) -> dict:
    """An xray_tomography training item: the label volume as class indices 0..2 (NIfTI)."""
    name = Path(label).name
    try:
        with SlabReader(image) as reader:
            image_shape = reader.meta.shape
        values, meta = read_volume(label)
    except ValueError as e:
        raise LabelError(str(e)) from None
    if meta.shape != image_shape:
        raise LabelError(f"{name}: label volume shape {meta.shape} differs from the image's {image_shape} (z, y, x)")
    present = set(np.unique(values).tolist())
    unknown = sorted(present - set(TOMOGRAPHY_PHASES))
    if unknown:
        hint = " (0 = unlabelled voxels: every voxel needs a phase)" if 0 in unknown else ""
        raise LabelError(f"{name}: label values {unknown[:10]}{hint}; expected 1 pores, 2 zirconia, 3 nickel")
    classes = (values.astype(np.int16) - 1).astype(np.uint8)
    out = out_dir / f"{case}_classes.nii.gz"
    meta.dtype = np.dtype(np.uint8)
    write_volume(classes, meta, out)
    # The whole volume as one slab: an item without "slices" gets None in the meta
    # (LoadVolumed), which the data loader cannot collate.
    return {"image": str(image), "label": str(out), "slices": [0, int(meta.shape[0])]}


CONVERTERS = {"cxr_lungs": lungs_item, "cxr_anatomy": anatomy_item, "xray_tomography": tomography_item}


def training_items(model: str, labelled: list[dict], out_dir: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Convert the datastore's ``{"image", "label"}`` pairs for ``model`` into ``out_dir``.

    Returns (items, skipped): images whose label does not fit this model (a 3D volume
    for a 2D model, a lungs label for anatomy) are skipped, not errors. A label that is
    broken for the model raises ``LabelError``.
    """
    from xray_seg.label.images import dimension

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, skipped = [], []
    want = 3 if model == "xray_tomography" else 2
    for n, pair in enumerate(sorted(labelled, key=lambda p: p["image"])):
        case = f"{n:04d}"
        item = None
        if dimension(pair["image"]) == want:
            item = CONVERTERS[model](pair["image"], pair["label"], out_dir, case)
        if item is None:
            skipped.append(Path(pair["image"]).name)
        else:
            items.append(item)
    return items, skipped


def split(items: list[dict], val_split: float) -> tuple[list[dict], list[dict]]:
    """(training, validation): the last ``round(n * val_split)`` items (at least one) validate.

    With a single item, or ``val_split`` 0, the training items also validate (the
    comparison with the current model is then on the images just labelled).
    """
    if not items:
        return [], []
    n_val = max(1, round(len(items) * val_split)) if val_split > 0 and len(items) > 1 else 0
    if n_val == 0:
        return list(items), list(items)
    return list(items[:-n_val]), list(items[-n_val:])
