"""xray_seg.chest.anatomy_outputs: the cxr_anatomy inference writer and the pixel spacing it reports.

The image is non-square (90 rows x 70 columns) and the structures are drawn at known
(row, column) boxes with overlaps, so a transposition or a lost overlap changes a file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from PIL import Image
from dicom_files import write_dicom

from xray_seg.chest.anatomy import LABEL_VALUES, STRUCTURES, measurements
from xray_seg.chest.anatomy_outputs import SaveAnatomyd, pixel_spacing_mm
from xray_seg.shared.figures import CLASS_COLOURS

ROWS, COLS = 90, 70
ROW_MM, COL_MM = 0.2, 0.3  # DICOM PixelSpacing order: [row, column]
# Boxes as (row slice, column slice) in the picture's own layout.
BOXES = {
    "right_lung": (slice(20, 70), slice(5, 30)),  # 50 x 25
    "left_lung": (slice(20, 70), slice(40, 65)),  # 50 x 25
    "heart": (slice(22, 80), slice(25, 50)),  # over both lungs and both clavicles
    "right_clavicle": (slice(15, 25), slice(10, 35)),
    "left_clavicle": (slice(15, 25), slice(36, 61)),
}
# By hand: heart columns 25..49, thorax (both lungs) columns 5..64.
HEART_PX, THORAX_PX, LUNG_PX = 25, 60, 50 * 25
EXPECTED_FILES = {f"case1_{name}.png" for name in ("seg", *STRUCTURES)} | {"case1_measurements.json"}


def _masks() -> dict[str, np.ndarray]:
    """(rows, columns) uint8 masks of every structure."""
    masks = {}
    for name, box in BOXES.items():
        m = np.zeros((ROWS, COLS), np.uint8)
        m[box] = 1
        masks[name] = m
    return masks


def _pred(meta: dict) -> MetaTensor:
    """(5, W, H) channels in MONAI's PIL layout, as the pipeline hands them over."""
    rows_cols = np.stack([_masks()[s] for s in STRUCTURES])
    return MetaTensor(torch.from_numpy(rows_cols.transpose(0, 2, 1).astype(np.float32)), meta=dict(meta))


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_dicom(path: Path, pixel_spacing: list[float] | None) -> Path:
    return write_dicom(path, (np.arange(ROWS * COLS) % 4000).reshape(ROWS, COLS), pixel_spacing=pixel_spacing)


def _load(path: Path) -> MetaTensor:
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path))


# ---------------------------------------------------------------------------------------
# The files written for a PNG input
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("png")
    data = {"pred": _pred({"filename_or_obj": "/x/case1.png"})}
    result = SaveAnatomyd(keys="pred", output_dir=str(out))(data)
    assert result["pred"] is data["pred"]  # passed on unchanged
    return out


def test_writes_label_map_structures_and_measurements(png_outputs: Path) -> None:
    assert {p.name for p in png_outputs.iterdir()} == EXPECTED_FILES
    for path in png_outputs.glob("*.png"):
        array = _read_png(path)
        assert array.shape == (ROWS, COLS), path.name  # rows x columns of the input
        assert array.dtype == np.uint8


def test_label_map_values_and_overlap_priority(png_outputs: Path) -> None:
    seg = _read_png(png_outputs / "case1_seg.png")
    assert set(np.unique(seg).tolist()) == {0, *LABEL_VALUES.values()}
    expected = {
        (85, 5): 0,  # background
        (40, 10): LABEL_VALUES["right_lung"],
        (40, 55): LABEL_VALUES["left_lung"],
        (60, 27): LABEL_VALUES["heart"],  # heart over right lung
        (60, 45): LABEL_VALUES["heart"],  # heart over left lung
        (75, 37): LABEL_VALUES["heart"],
        (17, 12): LABEL_VALUES["right_clavicle"],
        (22, 15): LABEL_VALUES["right_clavicle"],  # clavicle over lung
        (23, 27): LABEL_VALUES["right_clavicle"],  # clavicle over heart over lung
        (23, 45): LABEL_VALUES["left_clavicle"],  # clavicle over heart over lung
        (17, 58): LABEL_VALUES["left_clavicle"],
    }
    assert {rc: int(seg[rc]) for rc in expected} == expected


def test_structure_pngs_are_whole_channels(png_outputs: Path) -> None:
    pred = _pred({"filename_or_obj": "/x/case1.png"})
    for i, structure in enumerate(STRUCTURES):
        written = _read_png(png_outputs / f"case1_{structure}.png")
        np.testing.assert_array_equal(written, pred[i].numpy().T.astype(np.uint8), err_msg=structure)
        np.testing.assert_array_equal(written, _masks()[structure])


def test_measurements_json_without_spacing(png_outputs: Path) -> None:
    report = _read_json(png_outputs / "case1_measurements.json")
    assert report["source"] == "case1.png"
    assert report["pixel_spacing_mm"] is None
    assert not [k for k in report if k.endswith(("_mm", "_mm2")) and k != "pixel_spacing_mm"]
    assert report == {"source": "case1.png", "pixel_spacing_mm": None, **measurements(_masks())}
    assert report["cardiothoracic_ratio"] == pytest.approx(HEART_PX / THORAX_PX)
    assert (report["heart_width_px"], report["thorax_width_px"]) == (HEART_PX, THORAX_PX)
    assert report["lung_area_px"] == {"right_lung": LUNG_PX, "left_lung": LUNG_PX, "total": 2 * LUNG_PX}


def test_unmeasurable_ratio_is_json_null(tmp_path: Path) -> None:
    pred = _pred({"filename_or_obj": "/x/case1.png"})
    pred[STRUCTURES.index("heart")] = 0
    SaveAnatomyd(output_dir=str(tmp_path))({"pred": pred})
    text = (tmp_path / "case1_measurements.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["cardiothoracic_ratio"] is None


def test_overlay_when_asked(tmp_path: Path) -> None:
    meta = {"filename_or_obj": "/x/case1.png"}
    image = MetaTensor(torch.linspace(0, 1, ROWS * COLS).reshape(ROWS, COLS).T[None].clone(), meta=meta)
    SaveAnatomyd(output_dir=str(tmp_path), save_overlay=True)({"pred": _pred(meta), "image": image})
    assert {p.name for p in tmp_path.iterdir()} == EXPECTED_FILES | {"case1_overlay.png"}
    with Image.open(tmp_path / "case1_overlay.png") as im:
        assert im.mode == "RGB"
        rgb = np.asarray(im)
    assert rgb.shape == (ROWS, COLS, 3)
    # The right lung's outer edge in its class colour; background stays grey.
    assert tuple(rgb[40, 5]) == CLASS_COLOURS[LABEL_VALUES["right_lung"] - 1]
    assert len(set(rgb[85, 5].tolist())) == 1


# ---------------------------------------------------------------------------------------
# Pixel spacing from what MONAI's readers put into the meta
# ---------------------------------------------------------------------------------------


def test_dicom_pixel_spacing_gives_mm_measurements(tmp_path: Path) -> None:
    image = _load(_write_dicom(tmp_path / "case1.dcm", [ROW_MM, COL_MM]))
    assert tuple(image.shape) == (1, COLS, ROWS, 1)  # ITK: (C, W, H, 1)
    out = tmp_path / "out"
    SaveAnatomyd(output_dir=str(out))({"pred": _pred(image.meta)})
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    assert all(_read_png(p).shape == (ROWS, COLS) for p in out.glob("*.png"))
    report = _read_json(out / "case1_measurements.json")
    assert report["source"] == "case1.dcm"
    assert report["pixel_spacing_mm"] == pytest.approx([ROW_MM, COL_MM])
    # Widths run along the rows, so they are in column spacing; areas in row x column.
    assert report["heart_width_mm"] == pytest.approx(HEART_PX * COL_MM)
    assert report["thorax_width_mm"] == pytest.approx(THORAX_PX * COL_MM)
    assert report["lung_area_mm2"] == pytest.approx(
        {"right_lung": LUNG_PX * ROW_MM * COL_MM, "left_lung": LUNG_PX * ROW_MM * COL_MM,
         "total": 2 * LUNG_PX * ROW_MM * COL_MM}
    )
    # The tag's own decimals reach measurements unchanged, so the figures match exactly.
    assert report == {"source": "case1.dcm", "pixel_spacing_mm": [ROW_MM, COL_MM],
                      **measurements(_masks(), (ROW_MM, COL_MM))}


def test_spacing_only_when_the_source_has_one(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(tmp_path / "a.jpg")
    # ITK reports 1 mm for a DICOM without PixelSpacing; that is not a real spacing.
    no_tag = _load(_write_dicom(tmp_path / "no_spacing.dcm", None))
    assert np.asarray(no_tag.meta["spacing"])[:2].tolist() == [1.0, 1.0]
    assert pixel_spacing_mm(no_tag.meta) is None
    for name in ("a.png", "a.jpg"):
        loaded = _load(tmp_path / name)
        assert pixel_spacing_mm(loaded.meta, loaded.affine) is None, name


def test_nifti_spacing_and_nifti_masks(tmp_path: Path) -> None:
    """NIfTI arrays are (x = column, y = row); masks stay NIfTI with the input's affine."""
    affine = np.diag([COL_MM, ROW_MM, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((COLS, ROWS), np.float32), affine), tmp_path / "case1.nii.gz")
    image = _load(tmp_path / "case1.nii.gz")
    assert pixel_spacing_mm(image.meta, image.affine) == pytest.approx((ROW_MM, COL_MM))
    out = tmp_path / "out"
    SaveAnatomyd(output_dir=str(out))({"pred": _pred(image.meta)})
    assert {p.name for p in out.iterdir()} == {
        *(f"case1_{n}.nii.gz" for n in ("seg", *STRUCTURES)), "case1_measurements.json"
    }
    seg = nib.load(out / "case1_seg.nii.gz")
    np.testing.assert_allclose(seg.affine, affine, atol=1e-6)
    assert np.asarray(seg.dataobj).shape == (COLS, ROWS)
    report = _read_json(out / "case1_measurements.json")
    assert report["pixel_spacing_mm"] == pytest.approx([ROW_MM, COL_MM])
    assert report["heart_width_mm"] == pytest.approx(HEART_PX * COL_MM)
    assert math.isclose(report["cardiothoracic_ratio"], HEART_PX / THORAX_PX)
