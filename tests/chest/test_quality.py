"""The quality check: features, bounds, score and flag on masks of known geometry, the
bounds against the training ground truth, and the qc.csv handler and report hook."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from xray_seg.chest.lung_selection import body_mask, select_lungs
from xray_seg.chest.quality import (
    ANATOMY_BOUNDS,
    LUNG_BOUNDS,
    LUNG_ENTROPY_LIMIT,
    AnatomyQualityd,
    LungQualityd,
    Uncertaintyd,
    anatomy_qc,
    bound_failures,
    lung_qc,
    score,
)
from xray_seg.chest.quality_bounds import bounds_from, case_features, ground_truth_cases
from xray_seg.shared.handlers import QualityTable, SegmentationReport

REPO = Path(__file__).resolve().parents[2]
W, H = 200, 240
RIGHT_C, LEFT_C = (72, 110), (128, 110)


def ellipse(centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    x, y = np.ogrid[:W, :H]
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 <= 1


def radiograph(lungs: np.ndarray) -> np.ndarray:
    image = np.zeros((W, H), np.float32)
    image[40:160, 10:] = 0.8
    image[lungs] = 0.35
    return image


def qc_of(mask: np.ndarray, image: np.ndarray | None = None, entropy: np.ndarray | None = None) -> dict:
    """The row for a mask, through the selection (as in the bundle)."""
    image = radiograph(ellipse(RIGHT_C, (20, 60)) | ellipse(LEFT_C, (20, 60))) if image is None else image
    body = body_mask(image)
    sides, record = select_lungs(mask, body)
    selection = {**record.__dict__, "removed_fraction": record.removed_fraction}
    return lung_qc(sides > 0, image, entropy, selection, body, "case", sides=sides)


def lungs(left_radii: tuple[float, float] = (20, 60)) -> np.ndarray:
    return ellipse(RIGHT_C, (20, 60)) | ellipse(LEFT_C, left_radii)


# ----------------------------------------------------------------------------------------
# Lungs
# ----------------------------------------------------------------------------------------


def test_two_plausible_sure_lungs_are_not_flagged() -> None:
    row = qc_of(lungs(), entropy=np.zeros((W, H), np.float16))
    assert row == {"stem": "case", "qc_score": 1.0, "qc_flag": False, "reasons": ""}


def test_one_side_only_is_flagged() -> None:
    row = qc_of(ellipse(RIGHT_C, (20, 60)))
    assert row["qc_flag"] and "lung on one side only" in row["reasons"] and row["qc_score"] <= 0.5


def test_a_small_left_lung_is_flagged_with_the_ratio() -> None:
    row = qc_of(lungs(left_radii=(12, 30)))
    assert row["qc_flag"] and "left/right lung area ratio 0.298 < " in row["reasons"]


def test_a_lung_touching_the_border_is_flagged() -> None:
    mask = lungs()
    mask[50:100, 0:60] = True  # the right lung runs up to the top edge, over 50 of its 200 pixels
    row = qc_of(mask)
    assert row["qc_flag"] and "lung touches image border" in row["reasons"]


def test_no_lung_is_flagged() -> None:
    row = qc_of(np.zeros((W, H), bool))
    assert row["qc_flag"] and row["reasons"] == "no lung found"


def test_lungs_brighter_than_the_body_are_flagged_as_inverted() -> None:
    image = 1.0 - radiograph(lungs())
    image[:40] = image[160:] = 0.0  # the air stays dark so that a body is found
    row = qc_of(lungs(), image=image)
    assert row["qc_flag"] and "inverted image?" in row["reasons"]


def test_uncertainty_alone_flags_and_lowers_the_score() -> None:
    sure = qc_of(lungs(), entropy=np.full((W, H), 0.2 * LUNG_ENTROPY_LIMIT, np.float16))
    unsure = qc_of(lungs(), entropy=np.full((W, H), 1.5 * LUNG_ENTROPY_LIMIT, np.float16))
    assert not sure["qc_flag"] and sure["qc_score"] > 0.9
    assert unsure["qc_flag"] and unsure["reasons"].startswith("uncertain (mean entropy") and unsure["qc_score"] < 0.5


def test_score_is_above_half_exactly_when_nothing_fails() -> None:
    assert score(0.0, 0.15, 0) == 1.0
    assert score(0.149, 0.15, 0) > 0.5 >= score(0.15, 0.15, 0)
    assert score(0.0, 0.15, 1) == 0.5 and score(0.0, 0.15, 2) == 0.25
    assert 0 < score(1.0, 0.15, 5) < score(0.5, 0.15, 5)


def test_a_blank_image_is_flagged_with_reasons() -> None:
    row = qc_of(np.zeros((W, H), bool), image=np.zeros((W, H), np.float32))
    assert row["qc_flag"]
    assert row["reasons"].split("; ") == ["blank image", "no body found in the image", "no lung found"]


def test_uncertainty_transform_softmax_and_sigmoid() -> None:
    p = torch.zeros(2, 4, 4)
    p[0], p[1] = 0.5, 0.5
    p[:, 0, 0] = torch.tensor([1.0, 0.0])
    out = Uncertaintyd(keys="pred")({"pred": p})["pred_entropy"]
    assert out.shape == (1, 4, 4) and out.dtype == np.float16
    assert out[0, 0, 0] == pytest.approx(0, abs=1e-3) and out[0, 1, 1] == pytest.approx(1, abs=1e-3)
    sig = Uncertaintyd(keys="pred", activation="sigmoid")({"pred": torch.full((5, 4, 4), 0.5)})["pred_entropy"]
    assert sig.shape == (5, 4, 4) and np.allclose(sig.astype(np.float32), 1, atol=1e-3)
    with pytest.raises(ValueError, match="activation"):
        Uncertaintyd(keys="pred", activation="tanh")


def test_lung_quality_transform_writes_the_row_and_drops_the_large_maps() -> None:
    mask = lungs()
    image = radiograph(mask)
    pred = MetaTensor(torch.as_tensor(mask[None], dtype=torch.float32), meta={"filename_or_obj": "/x/scan_01.png"})
    item = {"pred": pred, "image": torch.as_tensor(image[None]), "pred_entropy": np.zeros((1, W, H), np.float16)}
    out = LungQualityd(keys="pred")(item)
    assert out["qc"]["stem"] == "scan_01" and out["qc"]["qc_flag"] is False
    assert "pred_entropy" not in out


# ----------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------


def anatomy_channels() -> np.ndarray:
    right, left = ellipse((62, 120), (22, 70)), ellipse((138, 120), (22, 70))
    heart = ellipse((108, 160), (30, 30))
    r_clav, l_clav = np.zeros((W, H), bool), np.zeros((W, H), bool)
    r_clav[50:95, 58:64] = True
    l_clav[105:150, 58:64] = True
    return np.stack([right & ~heart, left & ~heart, heart, r_clav, l_clav]).astype(np.uint8)


def anatomy_image(channels: np.ndarray) -> np.ndarray:
    image = np.zeros((W, H), np.float32)
    image[30:170, 10:] = 0.8
    image[(channels[0] | channels[1]) > 0] = 0.35
    return image


def test_plausible_anatomy_is_not_flagged() -> None:
    channels = anatomy_channels()
    row = anatomy_qc(channels, anatomy_image(channels), np.zeros((5, W, H), np.float16), "a")
    assert not row["qc_flag"], row["reasons"]


def test_swapped_lungs_and_a_missing_heart_are_flagged() -> None:
    channels = anatomy_channels()
    swapped = channels[[1, 0, 2, 3, 4]]
    row = anatomy_qc(swapped, anatomy_image(channels), None, "a")
    assert row["qc_flag"] and "right and left lung on the wrong sides" in row["reasons"]
    no_heart = channels.copy()
    no_heart[2] = 0
    row = anatomy_qc(no_heart, anatomy_image(channels), None, "a")
    assert row["qc_flag"] and "missing heart" in row["reasons"]


def test_clavicles_below_the_heart_are_flagged() -> None:
    channels = anatomy_channels()
    low = channels.copy()
    low[3:] = np.roll(channels[3:], 140, axis=2)  # clavicles moved down to the diaphragm
    row = anatomy_qc(low, anatomy_image(channels), None, "a")
    assert row["qc_flag"] and "heart below clavicles" in row["reasons"] and "clavicle height" in row["reasons"]


def test_anatomy_quality_transform_accepts_the_label_map_form() -> None:
    channels = anatomy_channels()
    with_background = np.concatenate([1 - channels.max(0, keepdims=True), channels])
    item = {"pred": MetaTensor(torch.as_tensor(with_background), meta={"filename_or_obj": "b.png"}),
            "image": torch.as_tensor(anatomy_image(channels)[None]),
            "pred_entropy": np.zeros((6, W, H), np.float16)}
    out = AnatomyQualityd(keys="pred")(item)
    assert out["qc"]["stem"] == "b" and not out["qc"]["qc_flag"], out["qc"]["reasons"]


# ----------------------------------------------------------------------------------------
# The bounds against the training ground truth (real data)
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_features(request: pytest.FixtureRequest) -> list[tuple[dict, dict | None, str]]:
    data_dir = request.getfixturevalue("data_dir")
    cases = ground_truth_cases(data_dir, REPO / "data_manifests")
    if not all(Path(c["image"]).is_file() for c in cases):
        pytest.skip(f"the Montgomery and JSRT training images are not all under {data_dir}")
    return [(*case_features(c), Path(c["image"]).name) for c in cases]


@pytest.mark.real_data
def test_every_training_ground_truth_mask_passes_the_plausibility_checks(training_features) -> None:
    failures = {}
    for lung, anatomy, name in training_features:
        reasons = bound_failures(lung, LUNG_BOUNDS)
        if anatomy is not None:
            anatomy = dict(anatomy)
            if not all(anatomy.pop("present").values()) or anatomy.pop("sides_swapped", False):
                reasons.append("structure missing or sides swapped")
            reasons += bound_failures(anatomy, ANATOMY_BOUNDS)
        if reasons:
            failures[name] = reasons
    assert len(training_features) == 77 + 135
    assert not failures


@pytest.mark.real_data
def test_the_bounds_in_the_module_are_those_the_derivation_gives(training_features) -> None:
    derived = bounds_from([(lung, anatomy) for lung, anatomy, _ in training_features])
    assert derived["lungs"] == LUNG_BOUNDS
    assert {**LUNG_BOUNDS, **derived["anatomy"]} == ANATOMY_BOUNDS


# ----------------------------------------------------------------------------------------
# qc.csv and the evaluation report
# ----------------------------------------------------------------------------------------


def test_quality_table_writes_one_sorted_row_per_input(tmp_path: Path) -> None:
    rows = [{"stem": s, "qc_score": 0.75, "qc_flag": s == "a", "reasons": "r" if s == "a" else ""} for s in "cab"]
    engine = Engine(lambda e, batch: [{"qc": rows[batch]}])
    QualityTable(staging_dir=str(tmp_path)).attach(engine)
    engine.run(range(3), max_epochs=1)
    with open(tmp_path / "qc.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["stem"] for r in table] == ["a", "b", "c"]
    assert table[0] == {"stem": "a", "qc_score": "0.75", "qc_flag": "true", "reasons": "r"}
    assert table[1]["qc_flag"] == "false"


def test_segmentation_report_merges_the_quality_row_into_each_case(tmp_path: Path) -> None:
    truth = torch.zeros(2, 8, 8)
    truth[1, 2:6, 2:6] = 1
    truth[0] = 1 - truth[1]
    item = {"image": MetaTensor(torch.rand(1, 8, 8), meta={"filename_or_obj": "c1.png"}), "pred": truth.clone(),
            "label": truth, "qc": {"stem": "c1", "qc_score": 0.9, "qc_flag": False, "reasons": ""}}
    engine = Engine(lambda e, batch: [item])
    SegmentationReport(str(tmp_path), class_names=["background", "lung"], extra_key="qc").attach(engine)
    engine.run([0], max_epochs=1)
    with open(tmp_path / "metrics_per_case.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["case"] == "c1.png" and math.isclose(float(row["dice_lung"]), 1.0)
    assert row["qc_score"] == "0.9" and row["qc_flag"] == "false" and row["stem"] == "c1"
