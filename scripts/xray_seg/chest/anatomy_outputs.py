"""The inference writer of the cxr_anatomy bundle: label map, one mask per structure, measurements.

For an input ``<stem>.<ext>`` it writes into ``output_dir``:

- ``<stem>_seg.png``: label map, 0 background and 1..5 in ``STRUCTURES`` order
  (``xray_seg.chest.anatomy.LABEL_VALUES``), overlaps resolved by ``PRIORITY``;
- ``<stem>_<structure>.png``: each structure's own 0/1 mask, whole where it is
  hidden under another structure in the label map;
- ``<stem>_measurements.json``: ``xray_seg.chest.anatomy.measurements`` plus the source
  file name and the pixel spacing used (null when the source has none);
- ``<stem>_overlay.png`` with ``save_overlay``.

Masks go through ``xray_seg.chest.transforms.SaveMaskd``, as in the lungs bundle, so they
have the input's height and width and NIfTI input gives ``.nii.gz`` masks (with the
input's affine) instead of PNGs; the JSON and the overlay are always as named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from xray_seg.chest.anatomy import STRUCTURES, measurements, merge_to_label_map
from xray_seg.shared.atomic import write_text
from xray_seg.shared.image_checks import image_stem
from xray_seg.shared.reports import to_jsonable
from xray_seg.chest.transforms import SaveMaskd, as_rows_cols, output_suffix, source_path
from xray_seg.shared.figures import label_overlay, save_png

# DICOM PixelSpacing (0028,0030), "row\column" in mm, as ITKReader ("0028|0030": '0.2\\0.3 ')
# and PydicomReader ("00280030": {"Value": [0.2, 0.3]}) put it into the meta.
_DICOM_PIXEL_SPACING = ("0028|0030", "00280030")


def pixel_spacing_mm(meta: Mapping, affine: torch.Tensor | np.ndarray | None = None) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm of the file a MONAI reader loaded, or None if unknown.

    Only the file's own geometry counts (the reader's keys), not a running affine that a
    Resize has rescaled; ``affine``, the tensor's own at the file's size, is only the
    fallback for NIfTI meta without ``original_affine``. PIL images (PNG, JPEG, TIFF) carry no spacing and their identity affine
    means nothing. ITK reports 1 mm for a DICOM without PixelSpacing (and ignores
    ImagerPixelSpacing, which is at the detector, magnified), so for DICOM the tag
    itself decides. NIfTI always has a geometry: the spacing is the length of the
    load-time affine's columns, axis 0 being the image columns (x), axis 1 the rows.
    """
    for key in _DICOM_PIXEL_SPACING:
        if key in meta:
            value = meta[key]
            value = value.get("Value") if isinstance(value, Mapping) else str(value).split("\\")
            try:
                row_mm, col_mm = (float(v) for v in value)
            except (TypeError, ValueError):
                return None  # a malformed tag is unknown spacing, not a reason to fail the run
            ok = all(math.isfinite(v) and v > 0 for v in (row_mm, col_mm))
            return (row_mm, col_mm) if ok else None
    nifti_affine = meta.get("original_affine", affine)
    if output_suffix(str(meta.get("filename_or_obj", ""))) == ".nii.gz" and nifti_affine is not None:
        a = np.asarray(nifti_affine, dtype=np.float64)
        col_mm, row_mm = (float(np.linalg.norm(a[:3, axis])) for axis in (0, 1))
        return row_mm, col_mm
    return None


class SaveAnatomyd(MapTransform):
    """Write the outputs listed in the module docstring for each (5, W, H) prediction.

    ``pred`` holds binary channels in ``STRUCTURES`` order at the input's own size, in
    MONAI's PIL layout (axis 1 = image columns, axis 2 = rows), with the input image's
    meta (file name, and the spacing keys of its reader). ``image_key`` names the (1, W, H)
    image the overlay is drawn on. The data item is passed on unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str = "./inference",
        image_key: str = "image",
        save_overlay: bool = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.save_overlay = save_overlay
        # One writer per output name; SaveMaskd picks PNG or NIfTI from the input's suffix.
        self._savers = {
            name: SaveMaskd(keys="mask", output_dir=output_dir, output_postfix=name)
            for name in ("seg", *STRUCTURES)
        }

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.ndim == 3 and pred.shape[0] == len(STRUCTURES) + 1:
                pred = pred[1:]  # one-hot label map of label_map.yaml: drop the background channel
            if pred.ndim != 3 or pred.shape[0] != len(STRUCTURES):
                raise ValueError(f"{source_path(pred)}: expected (5, W, H) structure channels, got {tuple(pred.shape)}")
            meta = dict(getattr(pred, "meta", {}) or {})  # includes the affine, for NIfTI masks
            raw = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
            channels = raw.detach().cpu() > 0
            label_map = merge_to_label_map(channels)

            def save(name: str, mask: torch.Tensor) -> None:
                self._savers[name]({"mask": MetaTensor(mask[None].to(torch.uint8), meta=meta)})

            save("seg", label_map)
            for i, structure in enumerate(STRUCTURES):
                save(structure, channels[i])

            source = source_path(pred)
            stem = image_stem(source)
            spacing = pixel_spacing_mm(meta, getattr(pred, "affine", None))
            # measurements wants (rows, columns) masks: transpose MONAI's (W, H).
            masks = {s: channels[i].numpy().T for i, s in enumerate(STRUCTURES)}
            report = {
                "source": Path(source).name,
                "pixel_spacing_mm": list(spacing) if spacing is not None else None,
                **measurements(masks, spacing),
            }
            text = json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n"
            write_text(self.output_dir / f"{stem}_measurements.json", text)

            if self.save_overlay:
                image = as_rows_cols(d[self.image_key])
                save_png(self.output_dir / f"{stem}_overlay.png", label_overlay(image, label_map.numpy().T))
        return d
