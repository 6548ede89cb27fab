"""Signed outline offsets per region, on lung masks of known geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xray_seg.chest.boundary_offsets import dice_cost, lung_offsets, signed_offsets


def _lungs(rows: int = 512, medial: int = 0, lateral: int = 0, top: int = 0, bottom: int = 0) -> np.ndarray:
    """Two rectangular lungs of a 512-row frame scaled to ``rows``; each edge moved outwards by the given px (at 512)."""
    mask = np.zeros((512, 512), bool)
    y0, y1 = 100 - top, 400 + bottom
    mask[y0:y1, 60 - lateral : 220 + medial] = True  # right lung (image left), medial edge towards column 256
    mask[y0:y1, 292 - medial : 452 + lateral] = True
    if rows != 512:
        index = (np.arange(rows) * 512 // rows)
        mask = mask[np.ix_(index, index)]
    return mask


def test_identical_masks_have_no_offset() -> None:
    out = signed_offsets(_lungs(), _lungs())
    assert all(abs(v) <= 0.5 for v in out.values()), out  # the outline pixel vs the truth's edge: within a pixel


@pytest.mark.parametrize("rows", [512, 1024])
def test_each_region_reports_its_own_edge_in_512_row_pixels(rows: int) -> None:
    truth = _lungs(rows)
    medial = signed_offsets(_lungs(rows, medial=6), truth)
    assert medial["medial"] == pytest.approx(6, abs=1.0) and abs(medial["lateral"]) <= 0.5
    lateral = signed_offsets(_lungs(rows, lateral=-5), truth)  # drawn 5 px inside the ribs
    assert lateral["lateral"] == pytest.approx(-5, abs=1.0) and abs(lateral["medial"]) <= 0.5
    ends = signed_offsets(_lungs(rows, top=-8, bottom=4), truth)  # apex drawn lower, bases lower too
    assert ends["apex"] < -3 and ends["base"] > 1.5  # the ends' side-wall pixels (offset 0) dilute the edge's
    assert abs(ends["medial"]) <= 0.5 and abs(ends["lateral"]) <= 0.5


def test_empty_masks_give_nan() -> None:
    assert all(math.isnan(v) for v in signed_offsets(np.zeros((64, 64)), _lungs(64)).values())


def test_report_masks_are_read_in_monai_pil_layout() -> None:
    """The evaluation hands one-hot (C, W, H) masks, columns first (LoadImaged with PILReader)."""
    one_hot_pil = lambda m: np.stack([~m.T, m.T]).astype(np.float32)  # noqa: E731  (rows, cols) -> (C, W, H)
    out = lung_offsets(one_hot_pil(_lungs(medial=4)), one_hot_pil(_lungs()))
    assert set(out) == {"offset_medial_px", "offset_lateral_px", "offset_apex_px", "offset_base_px"}
    assert out["offset_medial_px"] == pytest.approx(4, abs=1.0) and abs(out["offset_lateral_px"]) <= 0.5
    lower = lung_offsets(one_hot_pil(_lungs(bottom=6)), one_hot_pil(_lungs()))  # bases drawn 6 px lower
    assert lower["offset_base_px"] > 2 and abs(lower["offset_apex_px"]) <= 0.5


def test_dice_cost_of_a_one_pixel_wider_outline() -> None:
    square = np.zeros((512, 512), bool)
    square[100:200, 100:200] = True  # grown by 1 px: 4 sides of 100 px, corners (at sqrt 2) not
    assert dice_cost(square) == pytest.approx(1 - 2 * 10000 / (10400 + 10000))
    assert dice_cost(square, px=0) == 0.0
