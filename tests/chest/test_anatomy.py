"""xray_seg.chest.anatomy: label-map merging with the overlap priority, the transform, and measurements."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from xray_seg.chest.anatomy import (
    LABEL_VALUES,
    PRIORITY,
    STRUCTURES,
    MergeStructuresd,
    cardiothoracic_ratio,
    measurements,
    merge_to_label_map,
    split_label_map,
)

RL, LL, HEART, RC, LC = range(5)  # channel indices in STRUCTURES order


def test_constants_agree() -> None:
    assert STRUCTURES == ("right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle")
    assert dict(LABEL_VALUES) == {s: i + 1 for i, s in enumerate(STRUCTURES)}
    assert sorted(PRIORITY) == sorted(STRUCTURES) and PRIORITY.index("heart") == 2


def _overlapping_channels() -> np.ndarray:
    """6 x 6 masks: a clavicle and the heart over the right lung, the left clavicle over the heart."""
    c = np.zeros((5, 6, 6), np.uint8)
    c[RL, 0:4, :] = 1
    c[RC, 0:2, 0:3] = 1  # clavicle over lung
    c[HEART, 2:6, 2:6] = 1  # heart over lung (rows 2-3), heart alone (rows 4-5)
    c[LC, 4, 4:6] = 1  # clavicle over heart
    c[LL, 5, 0] = 1  # lung alone
    return c


EXPECTED = np.array(
    [
        [4, 4, 4, 1, 1, 1],
        [4, 4, 4, 1, 1, 1],
        [1, 1, 3, 3, 3, 3],
        [1, 1, 3, 3, 3, 3],
        [0, 0, 3, 3, 5, 5],
        [2, 0, 3, 3, 3, 3],
    ],
    np.uint8,
)


def test_merge_paints_clavicle_over_heart_over_lung() -> None:
    label_map = merge_to_label_map(_overlapping_channels())
    assert isinstance(label_map, np.ndarray) and label_map.dtype == np.uint8
    np.testing.assert_array_equal(label_map, EXPECTED)
    # 0/255 and bool channels mean the same.
    np.testing.assert_array_equal(merge_to_label_map(_overlapping_channels() * 255), EXPECTED)
    np.testing.assert_array_equal(merge_to_label_map(_overlapping_channels().astype(bool)), EXPECTED)


def test_merge_keeps_torch_in_torch_out() -> None:
    label_map = merge_to_label_map(torch.from_numpy(_overlapping_channels()).float())
    assert isinstance(label_map, torch.Tensor) and label_map.dtype == torch.uint8
    np.testing.assert_array_equal(label_map.numpy(), EXPECTED)


def test_split_and_merge_round_trip() -> None:
    rng = np.random.default_rng(0)
    label_map = rng.integers(0, 6, (7, 9)).astype(np.uint8)
    channels = split_label_map(label_map)
    assert channels.shape == (5, 7, 9) and channels.dtype == np.uint8 and channels.sum(0).max() == 1
    np.testing.assert_array_equal(merge_to_label_map(channels), label_map)
    np.testing.assert_array_equal(split_label_map(merge_to_label_map(channels)), channels)
    as_torch = split_label_map(torch.from_numpy(label_map))
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_array_equal(as_torch.numpy(), channels)
    # An overlap is lost in the merge: the lower-priority structure gives way.
    split = split_label_map(EXPECTED)
    assert split[RL].sum() < _overlapping_channels()[RL].sum()


def test_bad_shapes_and_values_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected 5 channels .* got shape \(3, 4, 4\)"):
        merge_to_label_map(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"values \[6, 9\]"):
        split_label_map(np.array([[0, 6], [9, 1]]))


def test_merge_transform_keeps_meta() -> None:
    affine = torch.diag(torch.tensor([0.7, 0.5, 1.0, 1.0], dtype=torch.float64))
    channels = MetaTensor(
        torch.from_numpy(_overlapping_channels()).float(), affine=affine, meta={"filename_or_obj": "/in/case.png"}
    )
    out = MergeStructuresd(keys="label")({"label": channels, "image": torch.zeros(1, 6, 6)})["label"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 6, 6) and out.dtype == torch.uint8
    assert out.meta["filename_or_obj"] == "/in/case.png"
    torch.testing.assert_close(out.affine, affine)
    np.testing.assert_array_equal(out[0].numpy(), EXPECTED)
    bad = MetaTensor(torch.zeros(3, 4, 4), meta={"filename_or_obj": "/in/bad.png"})
    with pytest.raises(ValueError, match=r"/in/bad\.png: expected 5 channels"):
        MergeStructuresd(keys="label")({"label": bad})


def test_merge_transform_after_loading_a_manifest_label_list(tmp_path: Path) -> None:
    # A manifest item's label list loads as one channel per structure (MONAI's (W, H) layout).
    paths = []
    for index, structure in enumerate(STRUCTURES):
        path = tmp_path / structure / "case.png"
        path.parent.mkdir()
        Image.fromarray(_overlapping_channels()[index] * 255).save(path)
        paths.append(str(path))
    load = Compose([LoadImaged(keys="label", image_only=True), EnsureChannelFirstd(keys="label")])
    loaded = load({"label": paths})["label"]
    assert loaded.shape == (5, 6, 6)
    merged = MergeStructuresd(keys="label")({"label": loaded})["label"]
    np.testing.assert_array_equal(merged[0].numpy().T, EXPECTED)  # (W, H) back to rows x columns
    assert merged.meta["filename_or_obj"] == loaded.meta["filename_or_obj"]


# ---------------------------------------------------------------------------------------
# Cardiothoracic ratio and measurements on masks of known geometry (rows x columns)
# ---------------------------------------------------------------------------------------

SHAPE = (140, 120)


def _rect(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Inclusive row and column ranges."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = 255
    return mask


def _ellipse(center: tuple[int, int], radii: tuple[int, int]) -> np.ndarray:
    """Closed ellipse: at the centre row it spans exactly center col +- radius col."""
    r, c = np.ogrid[: SHAPE[0], : SHAPE[1]]
    return (((r - center[0]) / radii[0]) ** 2 + ((c - center[1]) / radii[1]) ** 2 <= 1).astype(np.uint8)


def _two_blob_heart() -> np.ndarray:
    # No single row spans the whole width: the extent is taken over the whole mask.
    return _rect((60, 69), (40, 59)) | _rect((80, 89), (60, 79))


@pytest.mark.parametrize("heart", [_rect((60, 99), (40, 79)), _two_blob_heart()], ids=["box", "two_blobs"])
def test_cardiothoracic_ratio_of_known_geometry(heart: np.ndarray) -> None:
    right_lung = _rect((20, 119), (10, 49))  # image left: the patient's right
    left_lung = _ellipse((70, 90), (40, 19))  # columns 71..109
    assert cardiothoracic_ratio(heart, right_lung, left_lung) == 0.4  # 40 / 100 exactly
    # Which lung is which does not change the thorax width.
    assert cardiothoracic_ratio(heart, left_lung, right_lung) == 0.4


def test_cardiothoracic_ratio_of_an_empty_structure_is_nan_without_warning() -> None:
    heart, lung, empty = _rect((60, 99), (40, 79)), _rect((20, 119), (10, 49)), np.zeros(SHAPE, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(cardiothoracic_ratio(empty, lung, _rect((20, 119), (70, 109))))
        assert math.isnan(cardiothoracic_ratio(heart, lung, empty))
        assert math.isnan(cardiothoracic_ratio(heart, empty, empty))
        result = measurements({"heart": empty, "right_lung": lung, "left_lung": empty}, (1.0, 1.0))
    assert math.isnan(result["cardiothoracic_ratio"])
    assert (result["heart_width_px"], result["thorax_width_px"], result["lung_area_px"]["left_lung"]) == (0, 0, 0)


def test_measurements_in_pixels_and_millimetres() -> None:
    masks = {
        "heart": _rect((60, 99), (40, 79)),
        "right_lung": _rect((20, 119), (10, 49)),  # 100 x 40 = 4000 px
        "left_lung": _rect((20, 69), (70, 109)),  # 50 x 40 = 2000 px
        "right_clavicle": _rect((10, 15), (10, 50)),  # ignored
    }
    result = measurements(masks, pixel_spacing_mm=(0.5, 0.7))  # (row, column) spacing
    assert result["cardiothoracic_ratio"] == 0.4
    assert (result["heart_width_px"], result["thorax_width_px"]) == (40, 100)
    assert result["lung_area_px"] == {"right_lung": 4000, "left_lung": 2000, "total": 6000}
    # Widths run along a row, so they scale with the column spacing.
    assert result["heart_width_mm"] == pytest.approx(28.0) and result["thorax_width_mm"] == pytest.approx(70.0)
    assert result["lung_area_mm2"] == pytest.approx({"right_lung": 1400.0, "left_lung": 700.0, "total": 2100.0})
    plain = measurements(masks, None)
    assert "lung_area_mm2" not in plain and "heart_width_mm" not in plain
    # Overlapping lungs count once in the total.
    masks["left_lung"] = _rect((20, 69), (40, 109))  # 10 columns over the right lung's rows 20..69
    assert measurements(masks, None)["lung_area_px"] == {"right_lung": 4000, "left_lung": 3500, "total": 7000}


def test_measurements_refuse_bad_input() -> None:
    lung = _rect((20, 119), (10, 49))
    with pytest.raises(ValueError, match="missing heart"):
        measurements({"right_lung": lung, "left_lung": lung}, None)
    with pytest.raises(ValueError, match="of one size"):
        cardiothoracic_ratio(lung[:-1], lung, lung)
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        measurements({"heart": lung, "right_lung": lung, "left_lung": lung}, (0.0, 0.5))


@pytest.mark.real_data
def test_cardiothoracic_ratio_of_real_jsrt_masks_is_plausible(data_dir: Path) -> None:
    root = data_dir / "jsrt_scr"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ratios = {}
    for path in sorted((root / "masks" / "heart").glob("*.png")):
        masks = [np.asarray(Image.open(root / "masks" / s / path.name)) for s in ("heart", "right_lung", "left_lung")]
        ratios[path.stem] = cardiothoracic_ratio(*masks)
    values = np.array(list(ratios.values()))
    print(
        f"JSRT cardiothoracic ratio over {len(values)} cases: mean {values.mean():.3f}, sd {values.std():.3f}, "
        f"min {values.min():.3f} ({min(ratios, key=ratios.get)}), "
        f"max {values.max():.3f} ({max(ratios, key=ratios.get)})"
    )
    assert len(values) > 100
    outside = {k: round(v, 3) for k, v in ratios.items() if not 0.25 <= v <= 0.75}  # nan is outside too
    assert not outside, f"implausible cardiothoracic ratios: {outside}"
