"""What a 2D infer request returns: one uint8 label map at the input's size, and measurements.

Runs after the bundle's own post-processing (softmax/sigmoid, inversion to the input's
size, discretisation, lung selection, quality row), in place of its file writers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from PIL import Image

from xray_seg.chest.anatomy import STRUCTURES, measurements, merge_to_label_map
from xray_seg.chest.anatomy_outputs import pixel_spacing_mm
from xray_seg.shared.reports import to_jsonable


def _array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class ChestResultd:
    """``pred`` (bundle post-processing output, (C, W, H) in MONAI's PIL layout) -> (W, H)
    uint8 label map in ``pred``, and the measurements in ``result``.

    cxr_lungs: C = 1 (argmax 0/1): the label map is that mask, 1 = lung.
    cxr_anatomy: C = 5 binary structure channels, merged with clavicle > heart > lung
    (``xray_seg.chest.anatomy.merge_to_label_map``): 1..5 = ``STRUCTURES`` order.
    The bundle's quality row (``qc``: qc_score, qc_flag, reasons) goes into the result too.
    """

    def __init__(self, model: str, key: str = "pred", result_key: str = "result") -> None:
        self.model, self.key, self.result_key = model, key, result_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        pred = d[self.key]
        meta = dict(getattr(pred, "meta", {}) or {})
        channels = _array(pred) > 0
        spacing = pixel_spacing_mm(meta, getattr(pred, "affine", None))
        if self.model == "cxr_anatomy":
            label_map = merge_to_label_map(channels.astype(np.uint8))
            masks = {s: channels[i].T for i, s in enumerate(STRUCTURES)}  # (rows, columns)
            result = measurements(masks, spacing)
        else:
            label_map = channels[0].astype(np.uint8)
            area = int(label_map.sum())
            result = {"lung_area_px": {"total": area}}
            if spacing is not None:
                result["lung_area_mm2"] = {"total": area * spacing[0] * spacing[1]}
        result["pixel_spacing_mm"] = list(spacing) if spacing is not None else None
        if isinstance(d.get("qc"), Mapping):  # the bundle's quality row (qc.csv of the command line)
            result["qc"] = {k: v for k, v in d["qc"].items() if k != "stem"}
        d[self.key] = label_map
        d[self.result_key] = to_jsonable(result)
        return d


def write_label_png(label_map: np.ndarray) -> str:
    """A (W, H) label map as a temporary rows x columns PNG; the caller (MONAI Label's
    response) removes it."""
    fd, path = tempfile.mkstemp(prefix="xray-seg-", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(label_map.T.astype(np.uint8))).save(path, format="PNG")
    except BaseException:
        os.unlink(path)
        raise
    return path
