"""The plausibility bounds of the quality check, derived from the training splits' ground truth.

    XRAY_DATA_DIR=/path/to/shared/data PYTHONPATH=scripts python -m xray_seg.chest.quality_bounds

prints, as JSON, the bounds that ``xray_seg.chest.quality.LUNG_BOUNDS`` and
``ANATOMY_BOUNDS`` hold: each feature's range over the ground-truth masks of the
Montgomery and JSRT/SCR training splits, widened by ``BOUND_MARGIN`` of that range
(tests/chest/test_quality.py checks the module's numbers against a fresh derivation).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from xray_seg.chest.lung_selection import LEFT, RIGHT, body_mask, select_lungs
from xray_seg.chest.quality import (
    BOUND_MARGIN,
    BOUND_SIDES,
    LUNG_BOUNDS,
    anatomy_features,
    lung_pair_features,
)
from xray_seg.shared.paths import DATA, REPO


def scaled(image: np.ndarray) -> np.ndarray:
    """Intensities as the bundles' preprocessing gives them: 0.5..99.5 percentiles -> 0..1, clipped."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def load_plane(path: Path) -> np.ndarray:
    """A PNG as a (W, H) float array, the layout of MONAI's PILReader."""
    with Image.open(path) as im:
        return np.asarray(im.convert("F") if im.mode not in ("L", "I;16", "I") else im, dtype=np.float32).T


def ground_truth_cases(data_dir: Path, manifests: Path, split: str = "training") -> list[dict]:
    """Training cases of both chest manifests: {"site", "image", "right", "left"[, "channels"]} paths.

    Montgomery has one mask of both lungs (split into sides at the body's midline);
    JSRT/SCR has one mask per structure.
    """
    cases = []
    for site in ("montgomery", "jsrt_scr"):
        manifest = json.loads((manifests / f"{site}.json").read_text())
        for case in manifest[split]:
            label = case["label"]
            cases.append({"site": site, "image": data_dir / site / case["image"],
                          "labels": [data_dir / site / p for p in (label if isinstance(label, list) else [label])]})
    return cases


def case_features(case: Mapping) -> tuple[dict, dict | None]:
    """(lung features, anatomy features or None) of one ground-truth case."""
    image = scaled(load_plane(case["image"]))
    body = body_mask(image)
    masks = [load_plane(p) > 127 for p in case["labels"]]
    if len(masks) == 1:
        sides, _ = select_lungs(masks[0], body)
        return lung_pair_features(sides == RIGHT, sides == LEFT, image, body), None
    channels = np.stack(masks)
    return lung_pair_features(channels[0], channels[1], image, body), anatomy_features(channels, image, body)


def _widen(values: Sequence[float], side: str, margin: float) -> tuple[float | None, float | None]:
    lo, hi = float(min(values)), float(max(values))
    pad = margin * (hi - lo)
    low = math.floor((lo - pad) * 1000) / 1000 if side in ("low", "both") else None
    high = math.ceil((hi + pad) * 1000) / 1000 if side in ("high", "both") else None
    return low, high


def derive_bounds(data_dir: Path, manifests: Path, margin: float = BOUND_MARGIN) -> dict[str, dict]:
    """Bounds of every plausibility feature from the training splits' ground truth.

    Returns {"lungs": {feature: (low, high)}, "anatomy": {...}}: the lung bounds over
    both sites, the heart and clavicle bounds over JSRT/SCR (the only set with them).
    """
    return bounds_from([case_features(case) for case in ground_truth_cases(data_dir, manifests)], margin)


def bounds_from(features: Sequence[tuple[dict, dict | None]], margin: float = BOUND_MARGIN) -> dict[str, dict]:
    """``derive_bounds`` from the (lung, anatomy) features of each case (``case_features``)."""
    lung_values: dict[str, list[float]] = {}
    anatomy_values: dict[str, list[float]] = {}
    for lung, anatomy in features:
        for store, feats in ((lung_values, lung), (anatomy_values, anatomy or {})):
            for name, value in feats.items():
                if name in BOUND_SIDES and (store is lung_values or name not in LUNG_BOUNDS):
                    store.setdefault(name, []).extend(value if isinstance(value, list) else [value])
    return {
        "lungs": {k: _widen(v, BOUND_SIDES[k], margin) for k, v in lung_values.items()},
        "anatomy": {k: _widen(v, BOUND_SIDES[k], margin) for k, v in anatomy_values.items()},
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Derive the QC plausibility bounds from training ground truth.")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: $XRAY_DATA_DIR)")
    parser.add_argument("--manifests", type=Path, default=REPO / "data_manifests")
    args = parser.parse_args(argv)
    bounds = derive_bounds(args.data, args.manifests)
    print(json.dumps(bounds, indent=2))


if __name__ == "__main__":
    main()
