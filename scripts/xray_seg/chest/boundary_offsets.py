"""Where a lung mask's outline lies against the truth's: a signed offset per region.

Dice says how much two masks differ, not how. Two sites can draw the same lungs
differently: one takes the outline further into the mediastinum, another stops
higher at the bases. A model trained on one site then draws that site's outline
at the other, and loses Dice on every case by the same few pixels. The signed
offset tells this apart from random failures: for every pixel on the predicted
outline, its distance to the truth's outline, positive outside the truth and
negative inside, averaged over four regions of the lung fields:

- ``apex``: the top fifth of the truth's lung height;
- ``base``: the bottom fifth (the diaphragm and costophrenic angles);
- ``medial`` and ``lateral``: the side walls between them, towards the midline
  (heart and mediastinum) or away from it (ribs).

Distances are in pixels of the image scaled to 512 rows, so figures compare across
image sizes. MONAI's surface-distance metrics are unsigned and not split by
region, hence this module (distance transforms from SciPy).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

REGIONS = ("medial", "lateral", "apex", "base")
REFERENCE_ROWS = 512
END_FRACTION = 0.2  # apex and base: this share of the truth's lung height at each end


def signed_offsets(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean signed offset (px at 512 rows; + outside the truth) of ``pred``'s outline per region.

    ``pred`` and ``truth`` are 2D lung masks (both lungs, any value > 0) as (rows, columns),
    the way PIL and numpy read an image; ``lung_offsets`` turns MONAI's layout into this.
    A region with no predicted outline in it, or an empty mask, gives NaN.
    """
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    out = dict.fromkeys(REGIONS, float("nan"))
    if not pred.any() or not truth.any():
        return out
    scale = REFERENCE_ROWS / truth.shape[0]
    # An outline pixel on the truth's own outline scores 0: inside, the distance to the
    # nearest background pixel less one; outside, the distance to the nearest truth pixel.
    signed = np.where(truth, 1 - ndimage.distance_transform_edt(truth), ndimage.distance_transform_edt(~truth)) * scale
    rows, cols = np.nonzero(pred & ~ndimage.binary_erosion(pred, border_value=0))

    truth_rows, truth_cols = np.nonzero(truth)
    top, bottom = truth_rows.min(), truth_rows.max()
    end = END_FRACTION * (bottom - top)
    midline = truth_cols.mean()  # the lungs sit either side of it
    # Each side's lung centre column: outline pixels nearer the midline than it are medial.
    left_of = truth_cols < midline
    centres = [truth_cols[side].mean() if side.any() else midline for side in (left_of, ~left_of)]
    centre = np.where(cols < midline, *centres)
    wall = (rows > top + end) & (rows < bottom - end)
    regions = {
        "apex": rows <= top + end,
        "base": rows >= bottom - end,
        "medial": wall & (np.abs(cols - midline) < np.abs(centre - midline)),
        "lateral": wall & (np.abs(cols - midline) >= np.abs(centre - midline)),
    }
    for name, where in regions.items():
        if where.any():
            out[name] = float(signed[rows[where], cols[where]].mean())
    return out


def lung_offsets(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``SegmentationReport`` case measure: one-hot (C, W, H) masks in, ``offset_<region>_px`` out.

    The masks come in MONAI's PIL layout (axis 1 = image columns, as loaded by
    ``LoadImaged``); they are turned to (rows, columns) before the regions are told apart.
    """
    lungs = lambda onehot: onehot.argmax(0).T > 0  # noqa: E731  every non-background channel is lung
    return {f"offset_{k}_px": v for k, v in signed_offsets(lungs(pred), lungs(truth)).items()}


def dice_cost(truth: np.ndarray, px: float = 1.0) -> float:
    """Dice lost by drawing ``truth``'s outline ``px`` pixels (at 512 rows) further out all round.

    The scale for reading the offsets: how much Dice a protocol difference of that
    size costs on a site's lung fields.
    """
    truth = np.asarray(truth) > 0
    grown = ndimage.distance_transform_edt(~truth) <= px * truth.shape[0] / REFERENCE_ROWS
    return float(1 - 2 * truth.sum() / (grown.sum() + truth.sum()))
