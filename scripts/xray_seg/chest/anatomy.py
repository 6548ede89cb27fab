"""Chest anatomy structures of the cxr_anatomy bundle: names, label values, overlaps, measurements.

The network predicts one sigmoid channel per structure (multi-label: the clavicles
lie over the lungs, the heart touches them). Transforms and reports share the
channel order, the label values of the single label map written for users, and
the rule that decides which structure a pixel shows where structures overlap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

# Channel order of the network and of the manifests' "label" lists.
STRUCTURES = ("right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle")
# Label-map values; 0 is background.
LABEL_VALUES: Mapping[str, int] = MappingProxyType({s: i for i, s in enumerate(STRUCTURES, start=1)})
# Highest first: where structures overlap the label map shows the first of them. The
# clavicles are thin and lie in front of the lungs, and the heart shadow hides the
# lung behind it, so the smaller, overlying structure wins.
PRIORITY = ("right_clavicle", "left_clavicle", "heart", "right_lung", "left_lung")
LUNGS = ("right_lung", "left_lung")

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def merge_to_label_map(channels: Array) -> Array:
    """(5, *spatial) binary channels in ``STRUCTURES`` order -> (*spatial) uint8 label map.

    A non-zero channel value means inside; threshold sigmoid outputs first (e.g.
    ``AsDiscreted(threshold=0.5)``). Overlaps follow ``PRIORITY``: the structures are
    painted lowest priority first, so a clavicle pixel over the lung reads as clavicle.
    Works on any spatial layout (MONAI's (W, H) as well as (H, W)); numpy in, numpy
    out, torch in, torch out (on the same device).
    """
    if channels.ndim < 2 or channels.shape[0] != len(STRUCTURES):
        raise ValueError(
            f"expected {len(STRUCTURES)} channels ({', '.join(STRUCTURES)}) first, got shape {tuple(channels.shape)}"
        )
    if isinstance(channels, torch.Tensor):
        label_map = torch.zeros(channels.shape[1:], dtype=torch.uint8, device=channels.device)
        channels = channels.as_tensor() if isinstance(channels, MetaTensor) else channels
    else:
        label_map = np.zeros(channels.shape[1:], np.uint8)
    for structure in reversed(PRIORITY):
        label_map[channels[STRUCTURES.index(structure)] > 0] = LABEL_VALUES[structure]
    return label_map


def split_label_map(label_map: Array) -> Array:
    """(*spatial) label map -> (5, *spatial) uint8 binary channels in ``STRUCTURES`` order.

    The inverse of ``merge_to_label_map`` for masks without overlaps (an overlap is
    lost in the merge: the pixel only belongs to the higher-priority structure).
    Raises ValueError for values other than 0..5.
    """
    values = torch.unique(label_map).tolist() if isinstance(label_map, torch.Tensor) else np.unique(label_map).tolist()
    unknown = sorted(set(values) - {0, *LABEL_VALUES.values()})
    if unknown:
        raise ValueError(f"label map has values {unknown}; expected 0 (background) or {dict(LABEL_VALUES)}")
    if isinstance(label_map, torch.Tensor):
        label_map = label_map.as_tensor() if isinstance(label_map, MetaTensor) else label_map
        return torch.stack([label_map == LABEL_VALUES[s] for s in STRUCTURES]).to(torch.uint8)
    return np.stack([label_map == LABEL_VALUES[s] for s in STRUCTURES]).astype(np.uint8)


class MergeStructuresd(MapTransform):
    """(5, *spatial) multi-label channels -> (1, *spatial) label map (0 background, 1..5).

    For the single-label-map output (and single-label training, as in the InvertedNet
    report); the MetaTensor's meta (file name, affine, spatial shape) and applied
    operations are kept, so inversion and the mask writers still work.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            channels = d[key]
            try:
                label_map = merge_to_label_map(channels)[None]
            except ValueError as e:
                meta = getattr(channels, "meta", {}) or {}
                raise ValueError(f"{meta.get('filename_or_obj', key)}: {e}") from e
            if isinstance(channels, MetaTensor):
                label_map = MetaTensor(
                    label_map, meta=dict(channels.meta), applied_operations=list(channels.applied_operations)
                )
            d[key] = label_map
        return d


def _columns(mask: np.ndarray) -> np.ndarray:
    """Indices of the columns that hold any pixel of ``mask`` (rows x columns)."""
    return np.flatnonzero(np.asarray(mask).any(axis=0))


def horizontal_extent(mask: np.ndarray) -> int:
    """Max column - min column + 1 over the mask's pixels; 0 for an empty mask."""
    columns = _columns(mask)
    return int(columns[-1] - columns[0] + 1) if columns.size else 0


def _binary_2d(masks: Mapping[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in masks]
    if missing:
        raise ValueError(f"measurements need masks of {', '.join(names)}; missing {', '.join(missing)}")
    arrays = {n: np.asarray(masks[n]) > 0 for n in names}
    shapes = {n: a.shape for n, a in arrays.items()}
    if len(set(shapes.values())) > 1 or any(a.ndim != 2 for a in arrays.values()):
        raise ValueError(f"masks must be 2D (rows, columns) and of one size, got shapes {shapes}")
    return arrays


def _widths(heart: np.ndarray, right_lung: np.ndarray, left_lung: np.ndarray) -> tuple[int, int]:
    """Heart width and thorax width in pixels; the thorax needs both lungs, else 0."""
    thorax = horizontal_extent(right_lung | left_lung) if right_lung.any() and left_lung.any() else 0
    return horizontal_extent(heart), thorax


def cardiothoracic_ratio(heart: np.ndarray, right_lung: np.ndarray, left_lung: np.ndarray) -> float:
    """Widest horizontal extent of the heart over that of the thorax, from binary masks.

    Masks are (rows, columns) with column 0 on the image left (numpy/PIL layout;
    transpose MONAI's PIL-loaded (W, H) arrays first); non-zero means inside. The
    heart width is max column - min column + 1 over the heart mask; the thorax width
    the same over both lungs together, i.e. from the outer edge of one lung to the
    outer edge of the other. Returns nan, without error or warning, when the heart
    or either lung is empty: the ratio is not measurable then.
    """
    masks = _binary_2d(
        {"heart": heart, "right_lung": right_lung, "left_lung": left_lung}, ("heart", "right_lung", "left_lung")
    )
    heart_px, thorax_px = _widths(masks["heart"], masks["right_lung"], masks["left_lung"])
    return heart_px / thorax_px if heart_px and thorax_px else math.nan


def measurements(masks: Mapping[str, np.ndarray], pixel_spacing_mm: tuple[float, float] | None = None) -> dict:
    """Cardiothoracic ratio, heart and thorax widths and lung areas from binary masks.

    ``masks`` maps structure names to (rows, columns) masks and needs at least the
    heart and both lungs (others are ignored). ``pixel_spacing_mm`` is (row spacing,
    column spacing) as in DICOM PixelSpacing; with it the widths (along rows, so in
    column spacing) and areas are also given in mm and mm^2. A width that cannot be
    measured (empty heart; thorax without both lungs) is 0 and the ratio nan. The
    total lung area counts pixels in either lung once.
    """
    m = _binary_2d(masks, ("heart", *LUNGS))
    heart_px, thorax_px = _widths(m["heart"], m["right_lung"], m["left_lung"])
    areas = {"right_lung": int(m["right_lung"].sum()), "left_lung": int(m["left_lung"].sum())}
    areas["total"] = int((m["right_lung"] | m["left_lung"]).sum())
    result: dict = {
        "cardiothoracic_ratio": heart_px / thorax_px if heart_px and thorax_px else math.nan,
        "heart_width_px": heart_px,
        "thorax_width_px": thorax_px,
        "lung_area_px": areas,
    }
    if pixel_spacing_mm is not None:
        row_mm, col_mm = _spacing(pixel_spacing_mm)
        result["heart_width_mm"] = heart_px * col_mm
        result["thorax_width_mm"] = thorax_px * col_mm
        result["lung_area_mm2"] = {k: v * row_mm * col_mm for k, v in areas.items()}
    return result


def _spacing(pixel_spacing_mm: tuple[float, float]) -> tuple[float, float]:
    try:
        row_mm, col_mm = (float(v) for v in pixel_spacing_mm)
    except (TypeError, ValueError):
        row_mm = col_mm = math.nan
    if not (math.isfinite(row_mm) and math.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers (row, column), got {pixel_spacing_mm!r}")
    return row_mm, col_mm


def channels_to_label_map(channels: torch.Tensor) -> torch.Tensor:
    """(5, spatial...) binary structure channels -> label map, as report handlers want."""
    return merge_to_label_map((channels > 0.5).to(torch.uint8)).long()


def ratio_error(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-case cardiothoracic ratio of prediction and truth, and their absolute difference.

    Takes (5, W, H) structure channels in MONAI's PIL layout (axis 1 = image
    columns), in ``STRUCTURES`` order, or six channels with background first (the
    one-hot label maps of ``label_map.yaml``); used as ``case_measures`` of the report.
    """
    if len(pred) == len(STRUCTURES) + 1:
        pred, truth = pred[1:], truth[1:]

    def ratio(channels: np.ndarray) -> float:
        by_name = {name: channels[i].T > 0.5 for i, name in enumerate(STRUCTURES)}  # -> (rows, cols)
        return cardiothoracic_ratio(by_name["heart"], by_name["right_lung"], by_name["left_lung"])

    predicted, reference = ratio(pred), ratio(truth)
    return {"ctr_pred": predicted, "ctr_truth": reference, "ctr_abs_error": abs(predicted - reference)}
