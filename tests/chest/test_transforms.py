"""xray_seg.chest.transforms and the bundle's image-loading pipeline, built from inference.yaml.

Every input format is written from one synthetic radiograph cropped to a non-square
96 rows x 80 columns, so that a height/width transposition anywhere changes a shape.
MONAI's PIL layout is (C, W, H): the preprocessed image of a 96x80 picture has spatial
shape (round(80 * 256 / 96), 256).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image
from dicom_files import write_dicom

from xray_seg.synthetic.cxr import synthesize_case
from xray_seg.shared.image_checks import image_stem
from xray_seg.chest.transforms import (
    AsGrey2Dd,
    BinariseMaskd,
    SaveMaskd,
    SaveOverlayd,
    output_suffix,
    pil_to_grey,
)
from xray_seg.shared.figures import RED

BUNDLE = Path(__file__).resolve().parents[2] / "bundle" / "cxr_lungs"
ROWS, COLS = 96, 80  # non-square on purpose
# DICOM PixelSpacing is [row spacing, column spacing] in mm.
ROW_MM, COL_MM = 0.5, 0.7
LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------------
# Fixtures: the pipeline from the real config, and one radiograph in every input format
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parser() -> ConfigParser:
    p = ConfigParser()
    p.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    p["bundle_root"] = str(BUNDLE)
    return p


@pytest.fixture(scope="module")
def preprocessing(parser: ConfigParser) -> Compose:
    """The preprocessing up to the image at its resized shape: the last step, padding to
    the window for batching, would hide a transposed reader (every image 256 x 256)."""
    steps = parser.get_parsed_content("preprocessing").transforms
    assert type(steps[-1]).__name__ == "SpatialPadd", [type(t).__name__ for t in steps]
    return Compose(steps[:-1])


@pytest.fixture(scope="module")
def loader(preprocessing: Compose) -> Compose:
    """The loading steps of the preprocessing (read, channel first, grey 2D), for realistic meta."""
    names = [type(t).__name__ for t in preprocessing.transforms[:3]]
    assert names == ["LoadImaged", "EnsureChannelFirstd", "AsGrey2Dd"], names
    return Compose(preprocessing.transforms[:3])


@pytest.fixture(scope="module")
def image_size(parser: ConfigParser) -> int:
    return int(parser.get_parsed_content("image_size"))


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    """Float image in [0, 1], ROWS x COLS, asymmetric both ways (cropped on the right)."""
    image, _ = synthesize_case(np.random.default_rng(0), ROWS)
    image = image[:, :COLS]
    assert image.shape == (ROWS, COLS)
    return image


def _grey8(image01: np.ndarray) -> np.ndarray:
    return np.round(image01 * 255).astype(np.uint8)


def _write_inputs(folder: Path, image01: np.ndarray) -> dict[str, Path]:
    g8 = _grey8(image01)
    grey = Image.fromarray(g8)
    paths: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        paths[name] = folder / name
        im.save(paths[name], **kw)

    save("grey8.png", grey)
    im16 = Image.fromarray(np.round(image01 * 4000).astype(np.uint16))
    im16full = Image.fromarray(np.round(image01 * 65535).astype(np.uint16))
    assert im16.mode == im16full.mode == "I;16"
    save("grey16.png", im16)
    save("grey16_full.png", im16full)
    save("rgb.png", grey.convert("RGB"))
    # Channels that differ: R is the negative, so reading the first channel instead of
    # luma would anti-correlate with the reference.
    save("rgb_mixed.png", Image.merge("RGB", [Image.fromarray(255 - g8), grey, grey]))
    save("rgba.png", grey.convert("RGBA"))
    save("grey_alpha.png", grey.convert("LA"))
    # An adaptive palette: its indices are not ordered by brightness (they anti-correlate
    # with it here), so reading indices instead of colours is caught.
    palette = grey.convert("RGB").quantize(colors=64)
    assert palette.mode == "P"
    assert np.corrcoef(np.asarray(palette).ravel(), g8.ravel())[0, 1] < 0.9
    save("palette.png", palette)
    save("photo.jpg", grey, quality=95)
    save("grey8.tif", grey)
    save("grey16.tif", im16)
    # NIfTI arrays are indexed (x = column, y = row), like MONAI's PIL layout.
    affine = np.diag([COL_MM, ROW_MM, 1.0, 1.0])
    paths["scan.nii.gz"] = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(image01.T.astype(np.float32), affine), paths["scan.nii.gz"])
    stored = np.round(image01 * 4000).astype(np.uint16)
    paths["mono2.dcm"] = write_dicom(folder / "mono2.dcm", stored, "MONOCHROME2", [ROW_MM, COL_MM])
    # MONOCHROME1: 0 is white; the same picture stored inverted.
    paths["mono1.dcm"] = write_dicom(folder / "mono1.dcm", (4000 - stored).astype(np.uint16), "MONOCHROME1", [ROW_MM, COL_MM])
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, radiograph: np.ndarray) -> dict[str, Path]:
    return _write_inputs(tmp_path_factory.mktemp("inputs"), radiograph)


@pytest.fixture(scope="module")
def preprocessed(preprocessing: Compose, inputs: dict[str, Path]) -> dict[str, torch.Tensor]:
    return {name: preprocessing({"image": str(path)})["image"] for name, path in inputs.items()}


def _corr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _expected_spatial(image_size: int) -> tuple[int, int]:
    # Longest side (the rows, MONAI's second spatial axis) to image_size.
    return round(COLS * image_size / ROWS), image_size


# ---------------------------------------------------------------------------------------
# The preprocessing of inference.yaml on every input format
# ---------------------------------------------------------------------------------------

FORMATS = [
    "grey8.png",
    "grey16.png",
    "grey16_full.png",
    "rgb.png",
    "rgb_mixed.png",
    "rgba.png",
    "grey_alpha.png",
    "palette.png",
    "photo.jpg",
    "grey8.tif",
    "grey16.tif",
    "scan.nii.gz",
    "mono2.dcm",
]


def test_reference_layout_follows_the_source(
    preprocessed: dict[str, torch.Tensor], radiograph: np.ndarray, image_size: int
) -> None:
    """The 8-bit PNG, the reference for the other formats, is (1, W, H) and not flipped."""
    ref = preprocessed["grey8.png"]
    assert tuple(ref.shape) == (1, *_expected_spatial(image_size))
    # The source, resized the same way in MONAI's (W, H) layout.
    source = F.interpolate(
        torch.from_numpy(radiograph.T.copy())[None, None], size=tuple(ref.shape[1:]), mode="bilinear"
    )
    assert _corr(ref, source) > 0.95
    # Not mirrored either way: the flipped versions correlate much less.
    assert _corr(ref, source.flip(-1)) < 0.9
    assert _corr(ref, source.flip(-2)) < 0.9


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_preprocesses_like_the_8bit_png(
    preprocessed: dict[str, torch.Tensor], image_size: int, name: str
) -> None:
    image = preprocessed[name]
    ref = preprocessed["grey8.png"]
    assert isinstance(image, torch.Tensor)
    assert image.dtype == torch.float32
    assert image.ndim == 3 and image.shape[0] == 1, tuple(image.shape)
    assert max(image.shape[1:]) == image_size
    # Same orientation as the reference: a transposed reader would give (256, 213).
    assert tuple(image.shape) == tuple(ref.shape)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # Robust percentile normalisation makes bit depth and colour mode irrelevant.
    assert _corr(image, ref) > 0.99, name


def test_dicom_pixel_spacing_is_carried_in_the_right_axes(
    preprocessed: dict[str, torch.Tensor], image_size: int
) -> None:
    """PixelSpacing [row, column] -> MONAI's (W, H) axes, scaled by the resize."""
    affine = np.asarray(preprocessed["mono2.dcm"].affine)
    w, h = _expected_spatial(image_size)
    assert abs(affine[0, 0]) == pytest.approx(COL_MM * COLS / w, rel=1e-3)
    assert abs(affine[1, 1]) == pytest.approx(ROW_MM * ROWS / h, rel=1e-3)


def test_monochrome1_dicom_is_inverted_on_read(preprocessed: dict[str, torch.Tensor]) -> None:
    """ITK inverts MONOCHROME1 (0 = white), so it normalises like the MONOCHROME2 twin."""
    mono1, mono2 = preprocessed["mono1.dcm"], preprocessed["mono2.dcm"]
    assert tuple(mono1.shape) == tuple(mono2.shape)
    assert _corr(mono1, mono2) > 0.99


def test_loader_gives_2d_grey_with_source_meta(loader: Compose, inputs: dict[str, Path]) -> None:
    """Before resizing every format is (1, W, H) at the file's own size, named after it."""
    for name, path in inputs.items():
        image = loader({"image": str(path)})["image"]
        assert tuple(image.shape) == (1, COLS, ROWS), name
        assert Path(str(image.meta["filename_or_obj"])).name == name


# ---------------------------------------------------------------------------------------
# pil_to_grey
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F"])
def test_pil_to_grey_keeps_grey_images_untouched(radiograph: np.ndarray, mode: str) -> None:
    if mode == "L":
        im = Image.fromarray(_grey8(radiograph))
    elif mode == "I;16":
        im = Image.fromarray(np.round(radiograph * 65535).astype(np.uint16))
    elif mode == "I":
        im = Image.fromarray(np.round(radiograph * 100000).astype(np.int32))
    else:
        im = Image.fromarray(radiograph.astype(np.float32))
    assert im.mode == mode
    assert pil_to_grey(im) is im  # no copy, no precision lost


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "CMYK", "1"])
def test_pil_to_grey_converts_colour_and_palette(radiograph: np.ndarray, mode: str) -> None:
    grey = Image.fromarray(_grey8(radiograph))
    im = grey.convert("RGB").quantize(colors=64) if mode == "P" else grey.convert(mode)
    out = pil_to_grey(im)
    assert out.mode == "L"
    assert out.size == (COLS, ROWS)
    if mode != "1":  # 1-bit is dithered
        assert _corr(np.asarray(out), np.asarray(grey)) > 0.99


# ---------------------------------------------------------------------------------------
# AsGrey2Dd
# ---------------------------------------------------------------------------------------


def _meta_tensor(array: torch.Tensor, filename: str = "/data/case.png") -> MetaTensor:
    return MetaTensor(array, meta={"filename_or_obj": filename})


def test_as_grey_drops_trailing_singleton_dims() -> None:
    x = torch.rand(1, 7, 5, 1)
    out = AsGrey2Dd(keys="image")({"image": _meta_tensor(x)})["image"]
    assert tuple(out.shape) == (1, 7, 5)
    torch.testing.assert_close(out.as_tensor(), x[..., 0])
    assert out.meta["filename_or_obj"] == "/data/case.png"


def test_as_grey_single_channel_is_unchanged() -> None:
    x = torch.rand(1, 7, 5)
    out = AsGrey2Dd(keys="image")({"image": x})["image"]
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("channels", [3, 4])
def test_as_grey_colour_becomes_luma(channels: int) -> None:
    x = torch.rand(channels, 7, 5)
    out = AsGrey2Dd(keys="image")({"image": _meta_tensor(x)})["image"]
    expected = sum(w * x[c] for c, w in enumerate(LUMA))[None]
    assert tuple(out.shape) == (1, 7, 5)
    torch.testing.assert_close(out.as_tensor(), expected)


def test_as_grey_ignores_alpha() -> None:
    rgb = torch.rand(3, 7, 5)
    opaque = torch.cat([rgb, torch.ones(1, 7, 5)])
    patchy = torch.cat([rgb, torch.rand(1, 7, 5)])
    t = AsGrey2Dd(keys="image")
    torch.testing.assert_close(t({"image": opaque})["image"], t({"image": patchy})["image"])


def test_as_grey_two_channels_keeps_the_grey_one() -> None:
    x = torch.rand(2, 7, 5)
    out = AsGrey2Dd(keys="image")({"image": _meta_tensor(x)})["image"]
    torch.testing.assert_close(out.as_tensor(), x[:1])


def test_as_grey_refuses_a_volume_naming_the_file() -> None:
    volume = _meta_tensor(torch.rand(1, 8, 8, 5), "/data/chest_volume.nii.gz")
    with pytest.raises(ValueError, match="chest_volume.nii.gz"):
        AsGrey2Dd(keys="image")({"image": volume})


def test_as_grey_refuses_many_channels_naming_the_file() -> None:
    with pytest.raises(ValueError, match=r"odd\.tif.*5-channel"):
        AsGrey2Dd(keys="image")({"image": _meta_tensor(torch.rand(5, 7, 5), "/x/odd.tif")})


def test_as_grey_missing_key_allowed() -> None:
    out = AsGrey2Dd(keys=["image", "label"], allow_missing_keys=True)({"image": torch.rand(1, 4, 3, 1)})
    assert tuple(out["image"].shape) == (1, 4, 3)
    assert "label" not in out


# ---------------------------------------------------------------------------------------
# BinariseMaskd
# ---------------------------------------------------------------------------------------


def _binarise(mask: torch.Tensor) -> torch.Tensor:
    out = BinariseMaskd(keys="label")({"label": mask})["label"]
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == tuple(mask.shape)
    return out


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([0, 1, 1, 0, 1, 0], torch.uint8),
        ([0, 255, 255, 0, 255, 0], torch.uint8),
        ([0, 65535, 65535, 0, 65535, 0], torch.int32),  # 16-bit masks load as int32 / uint16
        ([0.0, 1.0, 1.0, 0.0, 1.0, 0.0], torch.float32),
    ],
    ids=["0-1", "0-255", "0-65535", "float-0-1"],
)
def test_binarise_full_scale_masks(values: list, dtype: torch.dtype) -> None:
    mask = torch.tensor(values, dtype=dtype).view(1, 2, 3)
    expected = torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.uint8).view(1, 2, 3)
    assert torch.equal(_binarise(mask), expected)


def test_binarise_anti_aliased_8bit_thresholds_above_127_5() -> None:
    mask = torch.tensor([0, 1, 100, 127, 128, 200, 254, 255], dtype=torch.uint8).view(1, 2, 4)
    expected = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.uint8).view(1, 2, 4)
    assert torch.equal(_binarise(mask), expected)


def test_binarise_all_zero_mask() -> None:
    assert int(_binarise(torch.zeros(1, 4, 3, dtype=torch.uint8)).sum()) == 0
    assert int(_binarise(torch.zeros(1, 0, 3)).numel()) == 0


def test_binarise_keeps_meta() -> None:
    mask = MetaTensor(torch.tensor([[[0, 255]]], dtype=torch.uint8), meta={"filename_or_obj": "/m/a.png"})
    out = _binarise(mask)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "/m/a.png"


# ---------------------------------------------------------------------------------------
# SaveMaskd / SaveOverlayd
# ---------------------------------------------------------------------------------------

# Lit pixels as (column, row) in MONAI's (W, H) layout; distinct rows and columns and
# off the diagonal, so that a transposition moves them.
LIT = [(1, 3), (COLS - 1, 0), (10, ROWS - 2)]


def _mask_like(meta: dict) -> MetaTensor:
    mask = torch.zeros(1, COLS, ROWS)
    for col, row in LIT:
        mask[0, col, row] = 1
    return MetaTensor(mask, meta=dict(meta))


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _assert_png_mask(path: Path) -> None:
    assert path.is_file(), f"{path} not written; found {sorted(p.name for p in path.parent.iterdir())}"
    array = _read_png(path)
    assert array.shape == (ROWS, COLS)  # rows x columns, like the source picture
    assert array.dtype == np.uint8
    assert set(np.unique(array).tolist()) == {0, 1}
    assert sorted(map(tuple, np.argwhere(array).tolist())) == sorted((row, col) for col, row in LIT)


def test_save_mask_png_keeps_height_and_width(tmp_path: Path) -> None:
    mask = _mask_like({"filename_or_obj": "/data/images/case_01.png"})
    out = SaveMaskd(keys="pred", output_dir=str(tmp_path))({"pred": mask})
    assert out["pred"] is mask  # the data item is passed on unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_01_seg.png"]
    _assert_png_mask(tmp_path / "case_01_seg.png")


def test_save_mask_png_from_loaded_meta(tmp_path: Path, loader: Compose, inputs: dict[str, Path]) -> None:
    """With the meta that the real loader attaches (spatial_shape, affine, ...)."""
    image = loader({"image": str(inputs["grey8.png"])})["image"]
    SaveMaskd(keys="pred", output_dir=str(tmp_path))({"pred": _mask_like(image.meta)})
    _assert_png_mask(tmp_path / "grey8_seg.png")


def test_save_mask_nifti_keeps_affine(tmp_path: Path, loader: Compose, inputs: dict[str, Path]) -> None:
    image = loader({"image": str(inputs["scan.nii.gz"])})["image"]
    assert tuple(image.shape) == (1, COLS, ROWS)
    mask = image.clone()  # keeps the loaded meta and affine, as the pipeline's prediction does
    mask.zero_()
    for col, row in LIT:
        mask[0, col, row] = 1
    out_dir = tmp_path / "out"
    SaveMaskd(keys="pred", output_dir=str(out_dir))({"pred": mask})
    assert sorted(p.name for p in out_dir.iterdir()) == ["scan_seg.nii.gz"]
    written = nib.load(out_dir / "scan_seg.nii.gz")
    source = nib.load(inputs["scan.nii.gz"])
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert written.get_data_dtype() == np.uint8
    data = np.asarray(written.dataobj)
    assert data.shape == (COLS, ROWS)
    assert set(np.unique(data).tolist()) == {0, 1}
    assert sorted(map(tuple, np.argwhere(data).tolist())) == sorted(LIT)


def test_save_mask_nifti_without_loader_meta(tmp_path: Path) -> None:
    affine = torch.diag(torch.tensor([COL_MM, ROW_MM, 1.0, 1.0], dtype=torch.float64))
    mask = MetaTensor(_mask_like({}).as_tensor(), affine=affine, meta={"filename_or_obj": "/data/a.b.nii.gz"})
    SaveMaskd(keys="pred", output_dir=str(tmp_path))({"pred": mask})
    written = nib.load(tmp_path / "a.b_seg.nii.gz")
    np.testing.assert_allclose(written.affine, affine.numpy(), atol=1e-6)
    assert sorted(map(tuple, np.argwhere(np.asarray(written.dataobj)).tolist())) == sorted(LIT)


def test_save_mask_after_dicom_meta_keeps_2d_outputs(
    tmp_path: Path, loader: Compose, inputs: dict[str, Path]
) -> None:
    """Regression: MONAI's SaveImage drops the channel axis for good once it meets a meta
    spatial_shape as long as the array, as a DICOM's (W, H, 1) is; every later PNG came
    out as a 1-pixel-wide strip. One SaveMaskd instance serves the whole run."""
    saver = SaveMaskd(keys="pred", output_dir=str(tmp_path))
    dicom_like = {"filename_or_obj": "/data/images/xray.dcm", "spatial_shape": np.array([COLS, ROWS, 1])}
    saver({"pred": _mask_like(dicom_like)})
    saver({"pred": _mask_like({"filename_or_obj": "/data/images/next.png", "spatial_shape": np.array([COLS, ROWS])})})
    # And with the meta of a real DICOM read by the pipeline's loader.
    dicom = loader({"image": str(inputs["mono2.dcm"])})["image"]
    assert len(dicom.meta["spatial_shape"]) == 3  # the quirk's trigger is really there
    saver({"pred": _mask_like(dicom.meta)})
    saver({"pred": _mask_like({"filename_or_obj": "/data/images/last.png"})})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_seg.png", "mono2_seg.png", "next_seg.png", "xray_seg.png",
    ]
    for name in ("xray_seg.png", "next_seg.png", "mono2_seg.png", "last_seg.png"):
        _assert_png_mask(tmp_path / name)


def test_save_overlay_draws_the_mask_over_the_image(tmp_path: Path, radiograph: np.ndarray) -> None:
    meta = {"filename_or_obj": "/data/images/case_02.jpg"}
    image = MetaTensor(torch.from_numpy(radiograph.T.copy())[None], meta=meta)
    mask = torch.zeros(1, COLS, ROWS)
    mask[0, 20:40, 30:60] = 1  # columns 20..39, rows 30..59
    data = {"image": image, "pred": MetaTensor(mask, meta=meta)}
    SaveOverlayd(keys="pred", image_key="image", output_dir=str(tmp_path))(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_02_overlay.png"]
    with Image.open(tmp_path / "case_02_overlay.png") as im:
        assert im.mode == "RGB"
        rgb = np.asarray(im).astype(int)
    assert rgb.shape == (ROWS, COLS, 3)
    red_excess = rgb[..., 0] - rgb[..., 1:].max(axis=-1)
    inside = np.zeros((ROWS, COLS), bool)
    inside[30:60, 20:40] = True
    assert (red_excess[inside] > 0).all()
    assert (red_excess[~inside] == 0).all()  # grey everywhere else
    assert tuple(rgb[30, 20]) == RED  # the outline in full colour


def test_save_overlay_disabled_writes_nothing(tmp_path: Path) -> None:
    meta = {"filename_or_obj": "/data/images/case.png"}
    data = {"image": MetaTensor(torch.rand(1, 6, 4), meta=meta), "pred": MetaTensor(torch.ones(1, 6, 4), meta=meta)}
    out = SaveOverlayd(keys="pred", image_key="image", output_dir=str(tmp_path / "o"), enabled=False)(data)
    assert out == data
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# image_stem / output_suffix
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "stem", "suffix"),
    [
        ("a.b.nii.gz", "a.b", ".nii.gz"),
        ("/data/scan.NII.GZ", "scan", ".nii.gz"),
        ("z.nii", "z", ".nii.gz"),
        ("x.PNG", "x", ".png"),
        ("/d/y.dcm", "y", ".png"),
        ("photo.jpeg", "photo", ".png"),
        ("/dir.with.dots/c.tif", "c", ".png"),
        ("v1.2_case.png", "v1.2_case", ".png"),
        ("noext", "noext", ".png"),
    ],
)
def test_image_stem_and_output_suffix(source: str, stem: str, suffix: str) -> None:
    assert image_stem(source) == stem
    assert output_suffix(source) == suffix


# ---------------------------------------------------------------------------------------
# MONAI transforms with a numpy kernel: the same results as MONAI's own
# ---------------------------------------------------------------------------------------


def test_numpy_percentiles_scale_like_monai() -> None:
    from monai.transforms import ScaleIntensityRangePercentilesd as Monai

    from xray_seg.chest.transforms import ScaleIntensityRangePercentilesd

    image = torch.from_numpy(np.random.default_rng(0).gamma(2.0, 900.0, (1, 120, 90)).astype(np.float32))
    settings = dict(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    ours, theirs = ScaleIntensityRangePercentilesd(**settings)({"image": image}), Monai(**settings)({"image": image})
    assert ours["image"].dtype == theirs["image"].dtype == torch.float32
    assert torch.allclose(torch.as_tensor(ours["image"]), torch.as_tensor(theirs["image"]), atol=1e-6)


@pytest.mark.parametrize("settings", [{}, {"to_onehot": 3}, {"keepdim": False}, {"dtype": torch.uint8}])
def test_numpy_argmax_labels_like_monai_ties_included(settings) -> None:
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted as Monai

    from xray_seg.chest.transforms import AsDiscreted

    scores = torch.from_numpy(np.random.default_rng(1).integers(0, 3, (3, 40, 30)).astype(np.float32))  # many ties
    pred = MetaTensor(scores, meta={"filename_or_obj": "x.png"})
    ours = AsDiscreted(keys="pred", argmax=True, **settings)({"pred": pred})["pred"]
    theirs = Monai(keys="pred", argmax=True, **settings)({"pred": pred})["pred"]
    assert type(ours) is type(theirs) is MetaTensor
    assert torch.equal(ours.as_tensor(), theirs.as_tensor())
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.meta["filename_or_obj"] == "x.png" and torch.equal(ours.affine, theirs.affine)
