"""A quality flag on every chest mask: model uncertainty + anatomical plausibility.

Each inference item gets ``item["qc"] = {"stem", "qc_score", "qc_flag", "reasons"}``
(``LungQualityd`` for cxr_lungs, ``AnatomyQualityd`` for cxr_anatomy); the
``QualityTable`` handler (``xray_seg.shared.handlers``) writes the rows as ``qc.csv``.

- Uncertainty is single-pass (no test-time augmentation, so inference is not
  slower): the normalised entropy of the network's probabilities (``Uncertaintyd``,
  before they are discretised), averaged over the predicted structure.
- Plausibility compares features of the final mask with bounds (``LUNG_BOUNDS``,
  ``ANATOMY_BOUNDS``) derived from the ground-truth masks of the training splits
  (``xray_seg.chest.quality_bounds``; ``python -m xray_seg.chest.quality_bounds``
  prints them).

``qc_flag`` is true when any check fails; ``reasons`` names each failure.
``qc_score`` in (0, 1] (higher = more trustworthy) is
``0.5 ** failures / (1 + (entropy / entropy_limit) ** 2)``: it is above 0.5 for an
unflagged mask and at most 0.5 for a flagged one (an entropy at its limit counts as
a failure), and it falls with uncertainty and with each failed check, so flagged
masks can be ranked for review.

Arrays are MONAI's (W, H) planes: axis 0 is x (image columns, the patient's right
on the image's left), axis 1 is y (rows, top first).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage as ndi

from xray_seg.chest.anatomy import STRUCTURES
from xray_seg.chest.lung_selection import LEFT, RIGHT, body_mask
from xray_seg.shared.image_checks import image_stem

# Plausibility bounds (low, high); None = unbounded on that side. Derived by
# ``quality_bounds.derive_bounds`` from the ground-truth masks of the training splits of
# data_manifests/montgomery.json (77 masks) and data_manifests/jsrt_scr.json (135,
# right_lung + left_lung) -- observed min/max widened by BOUND_MARGIN of the observed
# range -- and rounded outwards to 3 decimals. Reproduce with
#   XRAY_DATA_DIR=/path/to/shared/data PYTHONPATH=scripts python -m xray_seg.chest.quality_bounds
# (tests/chest/test_quality.py checks every training mask passes, and that a fresh
# derivation matches these numbers).
LUNG_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "area_fraction": (0.026, 0.532),      # both lungs / image
    "lr_area_ratio": (0.451, None),       # smaller lung / larger lung
    "height_fraction": (0.308, 1.047),    # each lung's vertical extent / image height
    "lr_height_ratio": (0.76, None),      # shorter lung / taller lung
    "border_contact": (None, 0.037),      # share of the image's edge pixels that are lung
    "outside_body": (None, 0.023),        # share of the lungs outside the body mask
    "contrast": (-0.037, None),           # mean body intensity minus mean lung intensity (0..1 scale)
}
# Anatomy (cxr_anatomy): the lung bounds above (two sites), and for heart and clavicles
# the JSRT/SCR training split (135 cases), the one set that has them; same rule.
ANATOMY_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    **LUNG_BOUNDS,
    "heart_area_fraction": (0.049, 0.141),   # heart / image
    "heart_between_lungs": (0.467, 0.769),   # heart centroid x between the lung centroids (0 right lung, 1 left)
    "cardiothoracic_ratio": (0.295, 0.686),  # heart width / lungs' total width
    "heart_below_clavicles": (0.28, None),   # heart centroid y - clavicle centroid y, / image height
    "clavicle_height": (None, 0.208),        # clavicle centroid y within the lungs' extent (0 top, 1 bottom)
}
BOUND_MARGIN = 0.2
# Which side of each feature's range is implausible (the derivation bounds only that side).
BOUND_SIDES = {
    "area_fraction": "both", "lr_area_ratio": "low", "height_fraction": "both", "lr_height_ratio": "low",
    "border_contact": "high", "outside_body": "high", "contrast": "low",
    "heart_between_lungs": "both", "heart_below_clavicles": "low", "clavicle_height": "high",
    "cardiothoracic_ratio": "both", "heart_area_fraction": "both",
}
# Design limits, not from ground truth (a ground-truth mask has nothing removed and
# no uncertainty):
# - more than this share of the raw lung prediction removed by post-processing;
MAX_REMOVED_FRACTION = 0.25
# - mean normalised entropy over the predicted lungs at or above this: twice the largest
#   value of the shipped (multi-site) cxr_lungs model on its training split (Montgomery 77
#   cases: 0.103, JSRT 135: 0.101), rounded, so a model as sure as on its own training
#   images is never flagged for uncertainty. The leave-one-site-out models of the
#   cross-site report use the same limit (same recipe, not calibrated on the held-out site);
LUNG_ENTROPY_LIMIT = 0.21
# - the same for cxr_anatomy (mean over the structures of the sigmoid entropy within
#   each): twice the largest value of the shipped model on its JSRT training split (0.058).
ANATOMY_ENTROPY_LIMIT = 0.12
# Both measured with `python -m xray_seg.studies.qc_entropy --bundle B --site S`; a
# retrained model may be calibrated the same way and passed as ``entropy_limit``.

# The checks look at every k-th pixel so that the longest side is at most this many:
# areas, ratios, extents and mean entropies are the same to well under 1 %, and the
# cost stays at a few ms whatever the input's size (border contact uses every pixel).
QC_WORKING_SIDE = 256


def qc_stride(shape: Sequence[int]) -> int:
    """Pixel step of the quality checks for a (..., W, H) array."""
    return max(1, math.ceil(max(shape[-2:]) / QC_WORKING_SIDE))


def _sampled(x: np.ndarray | None, step: int) -> np.ndarray | None:
    return None if x is None else x[..., ::step, ::step]


class Uncertaintyd(MapTransform):
    """Normalised entropy of probabilities, into ``output_key``, before they are discretised.

    ``softmax``: (C, W, H) class probabilities -> (1, W, H) entropy / log(C).
    ``sigmoid``: (C, W, H) independent channels -> (C, W, H) binary entropy / log(2).
    Values are in [0, 1]; 1 is a coin toss. Kept as a float16 numpy array on the quality
    checks' grid (every ``qc_stride``-th pixel; it is only summarised by the quality
    transforms, which drop it).
    """

    def __init__(self, keys: KeysCollection, output_key: str = "pred_entropy", activation: str = "softmax") -> None:
        super().__init__(keys)
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.output_key = output_key
        self.activation = activation

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = torch.as_tensor(d[key]).as_subclass(torch.Tensor).detach()  # no MetaTensor bookkeeping
            step = qc_stride(probs.shape)
            p = probs[..., ::step, ::step].float().clamp(1e-6, 1 - 1e-6)
            if self.activation == "softmax":
                h = -(p * p.log()).sum(dim=0, keepdim=True) / math.log(max(p.shape[0], 2))
            else:
                h = -(p * p.log() + (1 - p) * (1 - p).log()) / math.log(2)
            d[self.output_key] = h.clamp(0, 1).cpu().numpy().astype(np.float16)
        return d


# ----------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    xs, ys = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _extent(mask: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last index along ``axis`` (0 = x, 1 = y) where the mask has pixels."""
    hits = np.flatnonzero(mask.any(axis=1 - axis))
    return int(hits[0]), int(hits[-1])


def _border_contact(mask: np.ndarray) -> float:
    """Share of the image's edge pixels that the mask covers."""
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    return int(np.count_nonzero(edge)) / edge.size


def _ratio(a: float, b: float) -> float:
    return min(a, b) / max(a, b) if max(a, b) > 0 else 0.0


def lung_pair_features(right: np.ndarray, left: np.ndarray, image: np.ndarray | None,
                       body: np.ndarray | None) -> dict[str, float | list[float]]:
    """Features of a (right lung, left lung) pair of (W, H) masks; either may be empty."""
    lungs = right | left
    height = lungs.shape[1]
    feats: dict[str, float | list[float]] = {
        "area_fraction": float(lungs.mean()),
        "lr_area_ratio": _ratio(float(right.sum()), float(left.sum())),
        "border_contact": _border_contact(lungs),
    }
    heights = []
    for lung in (right, left):
        if lung.any():
            top, bottom = _extent(lung, 1)
            heights.append((bottom - top + 1) / height)
    feats["height_fraction"] = heights
    feats["lr_height_ratio"] = _ratio(*heights) if len(heights) == 2 else 0.0
    if body is not None and lungs.any():
        feats["outside_body"] = float(np.count_nonzero(lungs & ~body)) / float(lungs.sum())
        rest = body & ~lungs
        if image is not None and rest.any():
            feats["contrast"] = float(image[rest].mean() - image[lungs].mean())
    return feats


def split_sides(mask: np.ndarray, midline_x: float) -> tuple[np.ndarray, np.ndarray]:
    """A (W, H) two-lung mask -> (right lung, left lung): each component goes to its centroid's side.

    The patient's right lung is on the image's left (x below the midline).
    """
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    right, left = np.zeros_like(mask, bool), np.zeros_like(mask, bool)
    for i in range(1, n + 1):
        component = labels == i
        (right if _centroid(component)[0] < midline_x else left)[component] = True
    return right, left


def anatomy_features(channels: np.ndarray, image: np.ndarray | None, body: np.ndarray | None) -> dict:
    """Features of (5, W, H) binary channels in ``STRUCTURES`` order."""
    masks = {s: channels[i] > 0 for i, s in enumerate(STRUCTURES)}
    feats: dict = lung_pair_features(masks["right_lung"], masks["left_lung"], image, body)
    feats["present"] = {s: bool(m.any()) for s, m in masks.items()}
    height = channels.shape[2]
    heart = masks["heart"]
    lungs = masks["right_lung"] | masks["left_lung"]
    feats["heart_area_fraction"] = float(heart.mean())
    if masks["right_lung"].any() and masks["left_lung"].any():
        rx, lx = _centroid(masks["right_lung"])[0], _centroid(masks["left_lung"])[0]
        feats["sides_swapped"] = rx >= lx
        if heart.any() and lx != rx:
            feats["heart_between_lungs"] = (_centroid(heart)[0] - rx) / (lx - rx)
    if heart.any() and lungs.any():
        x0, x1 = _extent(lungs, 0)
        h0, h1 = _extent(heart, 0)
        feats["cardiothoracic_ratio"] = (h1 - h0 + 1) / (x1 - x0 + 1)
    clavicles = masks["right_clavicle"] | masks["left_clavicle"]
    if clavicles.any():
        cy = _centroid(clavicles)[1]
        if heart.any():
            feats["heart_below_clavicles"] = (_centroid(heart)[1] - cy) / height
        if lungs.any():
            y0, y1 = _extent(lungs, 1)
            feats["clavicle_height"] = (cy - y0) / max(y1 - y0, 1)
    return feats


# ----------------------------------------------------------------------------------------
# Checks and score
# ----------------------------------------------------------------------------------------


def bound_failures(feats: Mapping, bounds: Mapping[str, tuple[float | None, float | None]]) -> list[str]:
    """One short reason per feature outside its bounds (lists: each value is checked)."""
    reasons = []
    for name, (lo, hi) in bounds.items():
        if name not in feats:
            continue
        values = feats[name] if isinstance(feats[name], list) else [feats[name]]
        for v in values:
            if lo is not None and v < lo:
                reasons.append(f"{_LABELS.get(name, name)} {v:.3g} < {lo:g}")
                break
            if hi is not None and v > hi:
                reasons.append(f"{_LABELS.get(name, name)} {v:.3g} > {hi:g}")
                break
    return reasons


_LABELS = {
    "area_fraction": "lung area fraction",
    "lr_area_ratio": "left/right lung area ratio",
    "height_fraction": "lung height fraction",
    "lr_height_ratio": "left/right lung height ratio",
    "border_contact": "lung touches image border",
    "outside_body": "lung outside body",
    "contrast": "lungs not darker than body (inverted image?)",
    "heart_between_lungs": "heart position between lungs",
    "heart_below_clavicles": "heart below clavicles",
    "clavicle_height": "clavicle height within lungs",
    "cardiothoracic_ratio": "heart/thorax width ratio",
    "heart_area_fraction": "heart area fraction",
}


def score(entropy: float, entropy_limit: float, failures: int) -> float:
    """qc_score: > 0.5 when nothing fails and the entropy is below its limit, else <= 0.5."""
    certainty = 1.0 / (1.0 + (entropy / entropy_limit) ** 2)  # 1 when sure, 0.5 at the limit, never 0
    return certainty * 0.5**failures  # not rounded: many failures must not round to 0


def qc_row(stem: str, entropy: float, entropy_limit: float, reasons: list[str]) -> dict:
    if entropy >= entropy_limit:
        reasons = [*reasons, f"uncertain (mean entropy {entropy:.3f} >= {entropy_limit:g})"]
    failures = len(reasons)
    return {"stem": stem, "qc_score": score(entropy, entropy_limit, failures), "qc_flag": failures > 0,
            "reasons": "; ".join(reasons)}


def lung_qc(mask: np.ndarray, image: np.ndarray | None, entropy: np.ndarray | None, selection: Mapping | None,
            body: np.ndarray | None, stem: str, sides: np.ndarray | None = None, bounds: Mapping = LUNG_BOUNDS,
            entropy_limit: float = LUNG_ENTROPY_LIMIT, max_removed: float = MAX_REMOVED_FRACTION) -> dict:
    """The qc.csv row of one cxr_lungs mask: (W, H) final mask, image, entropy map, selection record
    and side map of ``select_lungs`` (without it, the mask's components are split at the midline)."""
    border = _border_contact(mask > 0)
    step = qc_stride(mask.shape)
    full_shape = mask.shape
    mask, image, body = _sampled(mask > 0, step), _sampled(image, step), _sampled(body, step)
    sides = _sampled(sides, step) if sides is not None and sides.shape == full_shape else None
    if entropy is not None and entropy.shape != mask.shape:
        entropy = _sampled(entropy, step)
    reasons: list[str] = []
    if image is not None and float(np.ptp(image)) < 1e-3:
        reasons.append("blank image")
    if selection is not None and not selection.get("body_found", True):
        reasons.append("no body found in the image")
    midline = (float(selection["midline_x"]) if selection else (full_shape[0] - 1) / 2) / step
    if sides is not None:
        right, left = mask & (sides == RIGHT), mask & (sides == LEFT)
    else:
        right, left = split_sides(mask, midline)
    if not mask.any():
        reasons.append("no lung found")
    elif not (right.any() and left.any()):
        reasons.append("lung on one side only")
    if selection is not None:
        if selection.get("merged"):
            reasons.append("lungs merged across the midline")
        if selection.get("removed_fraction", 0.0) > max_removed:
            reasons.append(f"post-processing removed {selection['removed_fraction']:.2f} of the prediction")
    if mask.any():
        feats = {**lung_pair_features(right, left, image, body), "border_contact": border}
        if not (right.any() and left.any()):  # one side: the pair ratios say nothing more
            feats = {k: v for k, v in feats.items() if k not in ("lr_area_ratio", "lr_height_ratio")}
        reasons += bound_failures(feats, bounds)
    mean_entropy = float(entropy[mask].astype(np.float32).mean()) if entropy is not None and mask.any() else 0.0
    return qc_row(stem, mean_entropy, entropy_limit, reasons)


def anatomy_qc(channels: np.ndarray, image: np.ndarray | None, entropy: np.ndarray | None, stem: str,
               bounds: Mapping = ANATOMY_BOUNDS, entropy_limit: float = ANATOMY_ENTROPY_LIMIT) -> dict:
    """The qc.csv row of one cxr_anatomy prediction: (5, W, H) binary channels, image, entropy maps."""
    channels = channels > 0
    border = _border_contact(channels[0] | channels[1])
    step = qc_stride(channels.shape)
    body = body_mask(image) if image is not None else None
    channels, image, body = _sampled(channels, step), _sampled(image, step), _sampled(body, step)
    if entropy is not None and entropy.shape[-2:] != channels.shape[-2:]:
        entropy = _sampled(entropy, step)
    reasons: list[str] = []
    if image is not None and float(np.ptp(image)) < 1e-3:
        reasons.append("blank image")
    if image is not None and body is None:
        reasons.append("no body found in the image")
    feats = {**anatomy_features(channels, image, body), "border_contact": border}
    missing = [s for s, there in feats.pop("present").items() if not there]
    if missing:
        reasons.append("missing " + ", ".join(s.replace("_", " ") for s in missing))
        # What a missing structure makes 0 says nothing more than "missing".
        drop = {"lr_area_ratio", "lr_height_ratio"} if {"right_lung", "left_lung"} & set(missing) else set()
        drop |= {"area_fraction"} if {"right_lung", "left_lung"} <= set(missing) else set()
        drop |= {"heart_area_fraction"} if "heart" in missing else set()
        feats = {k: v for k, v in feats.items() if k not in drop}
    if feats.pop("sides_swapped", False):
        reasons.append("right and left lung on the wrong sides")
    reasons += bound_failures(feats, bounds)
    means = []
    if entropy is not None:
        for i in range(channels.shape[0]):
            inside = channels[i] > 0
            if inside.any():
                plane = entropy[i] if entropy.shape[0] == channels.shape[0] else entropy[0]
                means.append(float(plane[inside].astype(np.float32).mean()))
    return qc_row(stem, float(np.mean(means)) if means else 0.0, entropy_limit, reasons)


class _QualityBase(MapTransform):
    def __init__(self, keys: KeysCollection, image_key: str = "image", entropy_key: str = "pred_entropy",
                 output_key: str = "qc") -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.entropy_key = entropy_key
        self.output_key = output_key

    @staticmethod
    def _numpy(x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    def _stem(self, x) -> str:
        meta = getattr(x, "meta", {}) or {}
        return image_stem(str(meta.get("filename_or_obj", "image")))


class LungQualityd(_QualityBase):
    """``item[output_key]``: the qc.csv row of a (1, W, H) 0/1 lung mask (after ``SelectLungsd``).

    Uses the image (same size), the entropy map of ``Uncertaintyd`` and the selection
    record, body mask and side map of ``SelectLungsd`` when present; the maps are
    dropped from the item afterwards (each is as large as the image).
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", entropy_key: str = "pred_entropy",
                 selection_key: str = "lung_selection", body_key: str = "body_mask", sides_key: str = "lung_sides",
                 output_key: str = "qc", entropy_limit: float = LUNG_ENTROPY_LIMIT) -> None:
        super().__init__(keys, image_key, entropy_key, output_key)
        self.selection_key = selection_key
        self.body_key = body_key
        self.sides_key = sides_key
        self.entropy_limit = entropy_limit

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = self._numpy(d[key])[0]
            image = self._numpy(d[self.image_key])[0] if self.image_key in d else None
            entropy = d.pop(self.entropy_key, None)
            d[self.output_key] = lung_qc(
                mask, image, None if entropy is None else entropy[0], d.get(self.selection_key),
                d.pop(self.body_key, None), self._stem(d[key]), sides=d.pop(self.sides_key, None),
                entropy_limit=self.entropy_limit,
            )
        return d


class AnatomyQualityd(_QualityBase):
    """``item[output_key]``: the qc.csv row of (5, W, H) structure channels (or (6, ...) with
    background first, as label_map.yaml gives) after discretising."""

    def __init__(self, keys: KeysCollection, image_key: str = "image", entropy_key: str = "pred_entropy",
                 output_key: str = "qc", entropy_limit: float = ANATOMY_ENTROPY_LIMIT) -> None:
        super().__init__(keys, image_key, entropy_key, output_key)
        self.entropy_limit = entropy_limit

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            channels = self._numpy(d[key])
            entropy = d.pop(self.entropy_key, None)
            if channels.shape[0] == len(STRUCTURES) + 1:  # softmax label map, background first
                channels = channels[1:]
                entropy = entropy[1:] if entropy is not None and entropy.shape[0] > 1 else entropy
            image = self._numpy(d[self.image_key])[0] if self.image_key in d else None
            d[self.output_key] = anatomy_qc(channels, image, entropy, self._stem(d[key]),
                                            entropy_limit=self.entropy_limit)
        return d
