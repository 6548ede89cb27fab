"""Anatomy-aware lung selection on synthetic masks and images of known geometry.

Arrays are MONAI (W, H) planes: axis 0 is x (columns). The synthetic "radiograph":
black air, a bright body x in [BODY_X0, BODY_X1), two darker elliptic lungs inside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from scipy import ndimage as ndi
from xray_seg.chest.lung_selection import (
    LEFT,
    RIGHT,
    SelectLungsd,
    body_mask,
    select_lungs,
)
from xray_seg.chest.quality_bounds import scaled

W, H = 200, 240
BODY_X0, BODY_X1 = 40, 160
RIGHT_C, LEFT_C = (72, 110), (128, 110)   # (x, y) centres: the patient's right lung is on the image's left
RADII = (20, 60)


def ellipse(centre: tuple[int, int], radii: tuple[int, int] = RADII) -> np.ndarray:
    x, y = np.ogrid[:W, :H]
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 <= 1


def radiograph() -> np.ndarray:
    image = np.zeros((W, H), np.float32)
    image[BODY_X0:BODY_X1, 10:] = 0.8
    image[ellipse(RIGHT_C) | ellipse(LEFT_C)] = 0.35
    return image + np.random.default_rng(0).normal(0, 0.01, image.shape).astype(np.float32)


def test_body_mask_covers_the_body_and_lungs_but_not_the_air_beside_it() -> None:
    body = body_mask(radiograph())
    assert body is not None
    lungs = ellipse(RIGHT_C) | ellipse(LEFT_C)
    assert body[lungs].all()
    assert not body[: BODY_X0 - 3].any() and not body[BODY_X1 + 3 :].any()


@pytest.mark.parametrize("image", [np.zeros((W, H), np.float32), np.full((W, H), 0.7, np.float32)], ids=["black", "grey"])
def test_no_body_in_a_blank_image(image: np.ndarray) -> None:
    assert body_mask(image) is None


def test_air_beside_the_body_larger_than_a_lung_goes_and_both_lungs_stay() -> None:
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    air = np.zeros((W, H), bool)
    air[2:35, 20:230] = True  # beside the body, on the right lung's side, larger than that lung
    assert air.sum() > right.sum()
    kept, record = select_lungs(right | left | air, body_mask(radiograph()))
    np.testing.assert_array_equal(kept > 0, right | left)
    np.testing.assert_array_equal(kept == RIGHT, right)  # the patient's right lung: the image's left
    np.testing.assert_array_equal(kept == LEFT, left)
    assert record.body_found and record.components == 3
    assert record.removed_outside_body == air.sum()
    assert record.removed_fraction == pytest.approx(air.sum() / (right | left | air).sum())
    assert abs(record.midline_x - (BODY_X0 + BODY_X1 - 1) / 2) < 3


def test_each_side_keeps_only_its_largest_component() -> None:
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    speck = ellipse((60, 200), (4, 4))  # inside the body, on the right lung's side, not touching it
    assert not (speck & right).any()
    kept, record = select_lungs(right | left | speck, body_mask(radiograph()))
    np.testing.assert_array_equal(kept > 0, right | left)
    assert record.removed_outside_body == 0 and record.kept_pixels == (right | left).sum()


def test_one_merged_component_is_kept_and_recorded() -> None:
    bridge = np.zeros((W, H), bool)
    bridge[RIGHT_C[0] : LEFT_C[0], 100:120] = True
    merged = ellipse(RIGHT_C) | ellipse(LEFT_C) | bridge
    kept, record = select_lungs(merged, body_mask(radiograph()))
    np.testing.assert_array_equal(kept > 0, merged)
    assert record.merged and record.components == 1


def test_one_side_only_is_kept_as_it_is() -> None:
    right = ellipse(RIGHT_C)
    kept, record = select_lungs(right, body_mask(radiograph()))
    np.testing.assert_array_equal(kept > 0, right)
    assert not record.merged and record.removed_fraction == 0


def test_empty_mask() -> None:
    kept, record = select_lungs(np.zeros((W, H), bool), body_mask(radiograph()))
    assert not kept.any() and record.components == 0 and record.removed_fraction == 0


def test_without_a_body_sides_split_at_the_image_centre_and_nothing_counts_as_outside() -> None:
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    air = np.zeros((W, H), bool)
    air[2:35, 20:230] = True
    kept, record = select_lungs(right | left | air, None)
    # Without a body the air beside it is the larger component on its side, and wins.
    np.testing.assert_array_equal(kept > 0, air | left)
    assert not record.body_found and record.midline_x == (W - 1) / 2


def test_the_transform_keeps_type_shape_and_meta_and_records_what_it_did() -> None:
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    air = np.zeros((W, H), bool)
    air[2:35, 20:230] = True
    pred = MetaTensor(torch.as_tensor((right | left | air)[None], dtype=torch.float32), meta={"filename_or_obj": "a.png"})
    image = MetaTensor(torch.as_tensor(radiograph()[None]))
    out = SelectLungsd(keys="pred", image_key="image")({"pred": pred, "image": image})
    assert isinstance(out["pred"], MetaTensor) and out["pred"].dtype == torch.float32
    assert out["pred"].shape == (1, W, H) and out["pred"].meta["filename_or_obj"] == "a.png"
    np.testing.assert_array_equal(out["pred"][0].numpy() > 0, right | left)
    assert out["lung_selection"]["removed_outside_body"] == air.sum()
    assert out["body_mask"].shape == (W, H) and set(np.unique(out["lung_sides"])) == {0, RIGHT, LEFT}
    assert pred.sum() == (right | left | air).sum()  # the input is not changed in place


def test_the_transform_refuses_an_image_of_another_size() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        SelectLungsd(keys="pred")({"pred": torch.zeros(1, W, H), "image": torch.zeros(1, W + 1, H)})


def test_a_lung_joined_to_the_air_beside_the_body_is_cut_back_to_the_body() -> None:
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    air = np.zeros((W, H), bool)
    air[2:30, 5:235] = True  # beside the body, several times a lung
    bridge = np.zeros((W, H), bool)
    bridge[25:RIGHT_C[0], 105:115] = True  # through the chest wall
    body = body_mask(radiograph())
    kept, record = select_lungs(right | left | air | bridge, body)
    assert record.components == 2 and (air | bridge | right).sum() > 2 * right.sum()  # mostly outside
    np.testing.assert_array_equal(kept == LEFT, left)
    np.testing.assert_array_equal(kept == RIGHT, (right | bridge) & body)  # the lung and the bridge's inside part
    assert not (kept[:BODY_X0 - 3] > 0).any()


@pytest.mark.real_data
def test_air_beside_real_bodies_larger_than_a_lung_goes_and_both_lungs_stay(data_dir: Path) -> None:
    """Montgomery training masks plus the largest air region outside the body (where it is
    larger than the smaller lung) as a false positive: what is kept is what the mask alone
    gives (the air may touch a lung; then that lung is cut back to the body)."""
    manifest = json.loads((Path(__file__).resolve().parents[2] / "data_manifests" / "montgomery.json").read_text())
    checked = 0
    for case in manifest["training"]:
        image = scaled(_plane_of(data_dir / "montgomery" / case["image"]))
        truth = _plane_of(data_dir / "montgomery" / case["label"]) > 127
        body = body_mask(image)
        air = ndi.binary_erosion(~body, iterations=3)
        labels, n = ndi.label(air)
        if n == 0:
            continue
        air = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        lungs, _ = ndi.label(truth)
        if air.sum() <= np.bincount(lungs.ravel())[1:].min():
            continue
        kept = select_lungs(truth | air, body)[0] > 0
        lungs = select_lungs(truth, body)[0] > 0  # what is kept of the truth alone (one region a side)
        dice = 2 * (kept & lungs).sum() / (kept.sum() + lungs.sum())
        assert dice > 0.99, f"{case['image']}: Dice {dice:.3f}"
        checked += 1
    assert checked >= 20  # the manifest's training images with that much air beside the body


def _plane_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32).T


def framed_radiograph() -> np.ndarray:
    """The radiograph inside a bright film frame running down both edges (as on
    MCUCXR_0080_0): every row then spans from frame to frame, so the body mask takes the
    dark air between frame and body for body."""
    image = radiograph()
    image[2:6] = image[-6:-2] = 0.9
    return image


@pytest.mark.parametrize("side", ["right", "left"])
def test_air_inside_a_film_frame_gives_way_to_the_darker_sides_lung(side: str) -> None:
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    air = np.zeros((W, H), bool)
    if side == "right":  # the patient's right: the image's left
        air[8:36, 20:230] = True
    else:
        air[W - 36 : W - 8, 20:230] = True
    lung = right if side == "right" else left
    assert air.sum() > lung.sum()
    image = framed_radiograph()
    body = body_mask(image)
    assert body is not None and body[air].all()  # the frame fools the body mask: the air is "inside"
    kept, record = select_lungs(right | left | air, body, image)
    np.testing.assert_array_equal(kept == RIGHT, right)
    np.testing.assert_array_equal(kept == LEFT, left)
    assert record.removed_fraction == pytest.approx(air.sum() / (right | left | air).sum())
    # Without the image (sizes alone) the larger air region would have won its side.
    kept_by_size, _ = select_lungs(right | left | air, body)
    np.testing.assert_array_equal(kept_by_size > 0, air | (left if side == "right" else right))


def test_a_lateral_region_brighter_than_the_lung_is_not_taken_for_air() -> None:
    """Only a darker lateral region gives way: a lateral region at least as bright stays the
    largest, as before."""
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    lateral = np.zeros((W, H), bool)
    lateral[8:36, 20:230] = True
    image = framed_radiograph()
    image[lateral] = 0.5  # brighter than the lungs (0.35)
    kept, _ = select_lungs(right | left | lateral, body_mask(image), image)
    np.testing.assert_array_equal(kept > 0, lateral | left)


def test_a_lung_split_by_an_opacity_keeps_its_larger_part() -> None:
    """Upper and lower parts of one lung share most of their columns: they lie one above the
    other, not side by side, so the larger part stays even when the other, a little
    more medial, is brighter."""
    right, left = ellipse(RIGHT_C), ellipse(LEFT_C)
    upper = right.copy()
    upper[:, 120:] = False
    lower = ellipse((RIGHT_C[0] + 8, 160), (20, 25))
    assert not (upper & lower).any() and upper.sum() > lower.sum()
    image = radiograph()
    image[lower] = 0.45
    kept, _ = select_lungs(upper | lower | left, body_mask(image), image)
    np.testing.assert_array_equal(kept > 0, upper | left)
