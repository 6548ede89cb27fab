"""3D volume reading and writing (xray_seg.tomography.volume_io): every format, slabs, bad input, real data."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import itk
import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image
from dicom_files import write_dicom_series

from xray_seg.tomography import volume_io
from xray_seg.tomography.volume_io import (
    SlabReader,
    SlabWriter,
    VolumeError,
    VolumeMeta,
    check_same_shape,
    output_path,
    read_volume,
    volume_format,
    volume_stem,
    write_volume,
)

SHAPE = (6, 20, 24)  # (z, y, x)
DTYPES = ["uint8", "uint16", "float32"]
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
# Non-trivial geometry: anisotropic spacing, an offset origin, a rotation about z.
GEOMETRY = dict(
    spacing=(2.5, 0.7, 0.5), origin=(10.0, -20.0, 30.0), direction=(_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)
)
MEDICAL = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".mha": "mha"}
FILE_SUFFIXES = [*MEDICAL, ".tif"]


def make_volume(dtype: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Distinct values that use the dtype's range: > 255 for uint16, negative fractions for float."""
    ramp = np.arange(np.prod(shape)).reshape(shape)
    if dtype == "uint8":
        return (ramp % 251).astype(np.uint8)
    if dtype == "uint16":
        return (ramp * 37 % 65521).astype(np.uint16)
    return (ramp * 0.25 - 100).astype(dtype)


def meta_for(path: Path, dtype: str) -> VolumeMeta:
    """Meta for writing ``path``: the non-trivial geometry for medical formats."""
    fmt = MEDICAL.get("".join(path.suffixes), "tiff")
    return VolumeMeta(fmt, SHAPE, np.dtype(dtype), **(GEOMETRY if fmt != "tiff" else {}))


def assert_geometry(meta: VolumeMeta, expected) -> None:
    # NIfTI stores geometry in float32.
    np.testing.assert_allclose(meta.spacing, expected.spacing, atol=1e-5)
    np.testing.assert_allclose(meta.origin, expected.origin, atol=1e-4)
    np.testing.assert_allclose(meta.direction, expected.direction, atol=1e-5)


def expect_error(call, *fragments: str) -> str:
    """``call()`` raises a one-line VolumeError containing every fragment; returns the message."""
    with pytest.raises(VolumeError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write_slices(folder: Path, volume: np.ndarray, pattern: str = "scan{:04d}.tif", first: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(volume):
        path = folder / pattern.format(first + i)
        if path.suffix == ".png":
            Image.fromarray(image).save(path)
        else:
            tifffile.imwrite(path, image)
    return folder


def dicom_direction(row=(1.0, 0.0, 0.0), col=(0.0, 0.0, -1.0)) -> tuple[float, ...]:
    return tuple(np.column_stack([row, col, np.cross(row, col)]).ravel())


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- names and formats


def test_formats_stems_and_output_paths(tmp_path):
    dicom = write_dicom_series(tmp_path / "series", make_volume("uint16", (2, 4, 5)))
    slices = write_slices(tmp_path / "stack", make_volume("uint8", (2, 4, 5)), "SOCprist{:04d}.tiff")
    out = tmp_path / "out"
    assert volume_format(dicom) == "dicom" and volume_format(slices) == "slices"
    for name, fmt, result in [
        ("a.nii.gz", "nifti", "a_seg.nii.gz"), ("a.nii", "nifti", "a_seg.nii"), ("a.nrrd", "nrrd", "a_seg.nrrd"),
        ("a.mha", "mha", "a_seg.mha"), ("a.mhd", "mha", "a_seg.mha"), ("a.TIF", "tiff", "a_seg.TIF"),
        ("a.tiff", "tiff", "a_seg.tiff"),
    ]:
        assert volume_format(tmp_path / name) == fmt
        assert volume_stem(tmp_path / name) == "a"
        assert output_path(tmp_path / name, out) == out / result
    assert volume_stem(slices) == "stack" and output_path(slices, out) == out / "stack_seg"
    assert output_path(dicom, out, suffix="_mask") == out / "series_mask.nii.gz"  # no DICOM SEG writing


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", FILE_SUFFIXES)
def test_file_round_trip(tmp_path, suffix, dtype):
    path = tmp_path / f"vol{suffix}"
    volume, meta = make_volume(dtype), meta_for(path, dtype)
    assert write_volume(volume, meta, path) == path
    array, back = read_volume(path)
    assert array.dtype == volume.dtype and array.shape == SHAPE and back.shape == SHAPE
    np.testing.assert_array_equal(array, volume)
    assert back.format == meta.format and back.source == str(path)
    if suffix in MEDICAL:
        assert_geometry(back, meta)
    assert tree(tmp_path) == [path.name]  # no temporary files left


@pytest.mark.parametrize("dtype", DTYPES)
def test_slice_folder_round_trip_mirrors_names(tmp_path, dtype):
    volume = make_volume(dtype)
    folder = write_slices(tmp_path / "in" / "stack", volume, "SOCprist{:04d}.tiff", first=7)
    array, meta = read_volume(folder)
    np.testing.assert_array_equal(array, volume)
    assert meta.format == "slices" and meta.shape == SHAPE and meta.dtype == volume.dtype
    assert meta.slice_names == [f"SOCprist{n:04d}.tiff" for n in range(7, 13)]
    out = output_path(folder, tmp_path / "out")
    write_volume(volume, meta, out)
    assert tree(tmp_path / "out") == ["stack_seg", *(f"stack_seg/{n}" for n in meta.slice_names)]
    again, _ = read_volume(out)
    np.testing.assert_array_equal(again, volume)


def test_slices_are_ordered_by_number_not_by_name(tmp_path):
    volume = make_volume("uint8", (11, 4, 5))
    folder = write_slices(tmp_path / "s", volume, "cut_{}.tif")  # cut_10 sorts before cut_2 by name
    np.testing.assert_array_equal(read_volume(folder)[0], volume)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_slice_round_trip(tmp_path, dtype):
    volume = make_volume(dtype)
    folder = write_slices(tmp_path / "png", volume, "img_{:03d}.png")
    array, meta = read_volume(folder)
    np.testing.assert_array_equal(array, volume)
    write_volume(array, meta, tmp_path / "png_seg")
    assert sorted(p.name for p in (tmp_path / "png_seg").iterdir()) == meta.slice_names


@pytest.mark.parametrize(
    "dtype, rescale, expected_dtype",
    [("uint8", None, "uint8"), ("uint16", None, "uint16"), ("uint16", (0.5, -100.0), "float64")],
)
def test_dicom_series_round_trip_through_nifti(tmp_path, dtype, rescale, expected_dtype):
    # DICOM has no float32 storage: a non-integer rescale slope is how real scans carry
    # fractional values, and ITK gives them as float64.
    stored = make_volume(dtype)
    folder = write_dicom_series(tmp_path / "series", stored, rescale=rescale)
    slope, intercept = rescale or (1, 0)
    expected = (stored * slope + intercept).astype(expected_dtype)
    array, meta = read_volume(folder)
    assert meta.format == "dicom" and array.dtype == np.dtype(expected_dtype)
    np.testing.assert_array_equal(array, expected)  # z order from positions, not file names
    dicom_geometry = VolumeMeta(
        "dicom", SHAPE, expected_dtype, (2.5, 0.7, 0.5), (10.0, -20.0, 30.0), dicom_direction()
    )
    assert_geometry(meta, dicom_geometry)
    out = output_path(folder, tmp_path / "out")
    write_volume(array, meta, out)
    again, back = read_volume(out)
    assert back.format == "nifti"
    np.testing.assert_array_equal(again, expected)
    assert_geometry(back, dicom_geometry)


def test_mhd_reads_and_is_written_as_mha(tmp_path):
    volume = make_volume("uint16")
    image = itk.image_view_from_array(volume)
    image.SetSpacing([0.5, 0.7, 2.5])
    itk.imwrite(image, str(tmp_path / "v.mhd"))  # header plus a separate .raw
    array, meta = read_volume(tmp_path / "v.mhd")
    np.testing.assert_array_equal(array, volume)
    assert meta.format == "mha" and meta.spacing == (2.5, 0.7, 0.5)
    out = output_path(tmp_path / "v.mhd", tmp_path / "out")
    assert out.name == "v_seg.mha"
    write_volume(array, meta, out)
    np.testing.assert_array_equal(read_volume(out)[0], volume)
    expect_error(lambda: write_volume(array, meta, tmp_path / "x.mhd"), "x.mhd", "write .mha instead")


def test_int8_is_read_exactly_and_written_as_int16_by_itk(tmp_path):
    volume = (make_volume("uint8").astype(np.int16) - 120).astype(np.int8)
    nibabel.save(nibabel.Nifti1Image(volume.T, np.eye(4)), tmp_path / "i8.nii.gz")  # nibabel is (x, y, z)
    array, meta = read_volume(tmp_path / "i8.nii.gz")
    assert array.dtype == np.int8 and meta.dtype == np.int8
    np.testing.assert_array_equal(array, volume)
    write_volume(array, meta, tmp_path / "i8_seg.nrrd")  # ITK Python has no signed-char images
    again, back = read_volume(tmp_path / "i8_seg.nrrd")
    assert back.dtype == np.int16
    np.testing.assert_array_equal(again, volume)
    tif = write_volume(volume, VolumeMeta("tiff", SHAPE, np.int8), tmp_path / "i8.tif")
    assert read_volume(tif)[0].dtype == np.int8


def test_nii_streamed_by_nibabel_matches_itk(tmp_path):
    # A scaled NIfTI with an oblique, mirrored affine: nibabel's (x, y, z) proxy must give ITK's voxels.
    raw = make_volume("uint16").astype(np.int16)
    affine = np.array([[0, -0.7, 0, 5], [0.5, 0, 0, -3], [0, 0, -2.5, 8], [0, 0, 0, 1.0]])
    image = nibabel.Nifti1Image(raw.T, affine)
    image.header.set_slope_inter(0.5, -3.0)
    nibabel.save(image, tmp_path / "scaled.nii")
    by_itk = itk.array_from_image(itk.imread(str(tmp_path / "scaled.nii")))
    with SlabReader(tmp_path / "scaled.nii") as reader:
        assert reader.streams and reader.dtype == np.float32
        np.testing.assert_allclose(reader.read(0, SHAPE[0]), by_itk)
        np.testing.assert_allclose(reader.read(2, 4), by_itk[2:4])
    np.testing.assert_allclose(read_volume(tmp_path / "scaled.nii")[0], raw * 0.5 - 3.0)


# ---------------------------------------------------------------- slabs


def volume_inputs(tmp_path: Path, dtype: str = "uint16") -> dict[str, Path]:
    """The same volume in every readable format."""
    volume = make_volume(dtype)
    paths = {}
    for suffix in FILE_SUFFIXES:
        path = tmp_path / f"v{suffix}"
        paths[suffix] = write_volume(volume, meta_for(path, dtype), path)
    paths["slices"] = write_slices(tmp_path / "slices", volume)
    paths["dicom"] = write_dicom_series(tmp_path / "dicom", volume)
    return paths


STREAMS = {".nii": True, ".nii.gz": False, ".nrrd": False, ".mha": False, ".tif": True, "slices": True, "dicom": True}


def test_slab_reader_matches_read_volume(tmp_path):
    volume = make_volume("uint16")
    for kind, path in volume_inputs(tmp_path).items():
        with SlabReader(path) as reader:
            assert reader.streams == STREAMS[kind], kind
            assert reader.shape == SHAPE and reader.dtype == volume.dtype
            assert reader.meta == read_volume(path)[1]
            slabs = [reader.read(z0, min(z0 + 4, SHAPE[0])) for z0 in range(0, SHAPE[0], 4)]
            np.testing.assert_array_equal(np.concatenate(slabs), volume, err_msg=kind)
            first = reader.read(1, 3)
            first[:] = 0  # a new array, never a view of a cached volume
            np.testing.assert_array_equal(reader.read(1, 3), volume[1:3], err_msg=kind)
        part, meta = read_volume(path, slices=(2, 5))
        np.testing.assert_array_equal(part, volume[2:5], err_msg=kind)
        assert meta.shape == SHAPE  # the whole volume's shape


def test_slab_reader_reads_only_the_slices_asked_for(tmp_path, monkeypatch):
    folder = write_slices(tmp_path / "s", make_volume("uint8"))
    read = []
    original = volume_io._read_slice
    monkeypatch.setattr(volume_io, "_read_slice", lambda path, *a: read.append(path.name) or original(path, *a))
    with SlabReader(folder) as reader:
        reader.read(2, 4)
    assert read == ["scan0003.tif", "scan0004.tif"]


@pytest.mark.parametrize("suffix", [*FILE_SUFFIXES, "slices"])
def test_slab_writer_equals_write_volume(tmp_path, suffix):
    labels = make_volume("uint8") % 4
    if suffix == "slices":
        meta = VolumeMeta("slices", SHAPE, np.uint16, slice_names=[f"s{i}.tif" for i in range(SHAPE[0])])
        whole_path, slab_path = tmp_path / "whole", tmp_path / "slabs"
    else:
        meta = meta_for(tmp_path / f"x{suffix}", "uint16")
        whole_path, slab_path = tmp_path / f"whole{suffix}", tmp_path / f"slabs{suffix}"
    write_volume(labels, meta, whole_path)
    with SlabWriter(slab_path, meta) as writer:  # uint8 by default, whatever the input's dtype
        for z0, z1 in [(0, 3), (3, 5), (5, 6)]:
            writer.write(z0, labels[z0:z1].astype(np.int64))  # e.g. from argmax
        assert not slab_path.exists()  # appears only when complete
    whole, whole_meta = read_volume(whole_path)
    slabs, slab_meta = read_volume(slab_path)
    assert slabs.dtype == np.uint8
    np.testing.assert_array_equal(slabs, whole)
    assert_geometry(slab_meta, whole_meta)
    if suffix in MEDICAL:
        assert_geometry(slab_meta, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([whole_path.name, slab_path.name])


@pytest.mark.parametrize("suffix", [*FILE_SUFFIXES, "slices"])
def test_slab_writer_leaves_nothing_on_error(tmp_path, suffix):
    meta = VolumeMeta("slices" if suffix == "slices" else "nifti", SHAPE, np.uint8)
    out = tmp_path / "out" / ("seg" if suffix == "slices" else f"seg{suffix}")
    with pytest.raises(RuntimeError, match="network crashed"):
        with SlabWriter(out, meta) as writer:
            writer.write(0, np.zeros((3, *SHAPE[1:]), np.uint8))
            raise RuntimeError("network crashed")
    assert tree(tmp_path / "out") == []
    writer = SlabWriter(out, meta)  # closed before every slice was written
    writer.write(0, np.zeros((3, *SHAPE[1:]), np.uint8))
    expect_error(writer.close, str(out), "only 3 of 6 slices were written")
    assert tree(tmp_path / "out") == []


def test_slab_writer_replaces_an_existing_slice_folder(tmp_path):
    meta = VolumeMeta("slices", (2, 4, 5), np.uint8, slice_names=["a1.tif", "a2.tif"])
    write_volume(np.zeros(meta.shape, np.uint8), meta, tmp_path / "seg")
    write_volume(np.ones(meta.shape, np.uint8), meta, tmp_path / "seg")
    assert tree(tmp_path) == ["seg", "seg/a1.tif", "seg/a2.tif"]
    np.testing.assert_array_equal(read_volume(tmp_path / "seg")[0], 1)


def test_slab_writer_rejects_misuse(tmp_path):
    meta = VolumeMeta("tiff", SHAPE, np.uint8)
    with pytest.raises(VolumeError):
        with SlabWriter(tmp_path / "a.tif", meta) as writer:
            writer.write(0, np.zeros((2, 20, 24)))
            expect_error(
                lambda: writer.write(3, np.zeros((2, 20, 24))), "a.tif", "starts at z=3", "next slice to write is z=2"
            )
            expect_error(lambda: writer.write(2, np.zeros((2, 20, 23))), "a.tif", "(2, 20, 23)", "does not fit")
            expect_error(lambda: writer.write(2, np.full((2, 20, 24), 300)), "a.tif", "0..300 do not fit", "uint8")
    assert tree(tmp_path) == []
    expect_error(lambda: SlabWriter(tmp_path / "a.tif", meta, dtype=bool), "a.tif", "unsupported data type bool")
    expect_error(lambda: SlabWriter(tmp_path / "noext", meta), "noext", "cannot tell the output format")
    png = VolumeMeta("slices", SHAPE, np.float32, slice_names=[f"p{i}.png" for i in range(6)])
    expect_error(lambda: SlabWriter(tmp_path / "p", png, np.float32), "PNG slices hold only uint8 or uint16")


# ---------------------------------------------------------------- bad input


def test_slice_folder_with_an_odd_slice_size(tmp_path):
    folder = write_slices(tmp_path / "s", make_volume("uint8"))
    tifffile.imwrite(folder / "scan0004.tif", np.zeros((20, 23), np.uint8))
    expect_error(lambda: read_volume(folder), str(folder), "scan0004.tif is 20x23 uint8", "other 5 (20x24 uint8)")
    tifffile.imwrite(folder / "scan0004.tif", np.zeros((20, 24), np.uint16))
    expect_error(lambda: SlabReader(folder), "scan0004.tif is 20x24 uint16")


def test_slice_folder_with_gaps_duplicates_or_nothing(tmp_path):
    gaps = write_slices(tmp_path / "gaps", make_volume("uint8", (8, 4, 5)))
    for n in (3, 6, 7):
        (gaps / f"scan{n:04d}.tif").unlink()
    expect_error(lambda: read_volume(gaps), str(gaps), "slices 1..8", "3, 6, 7 missing")
    dupes = write_slices(tmp_path / "dupes", make_volume("uint8", (3, 4, 5)))
    tifffile.imwrite(dupes / "other_2.tif", np.zeros((4, 5), np.uint8))
    expect_error(lambda: read_volume(dupes), "other_2.tif and scan0002.tif both have slice number 2")
    unnumbered = write_slices(tmp_path / "unnumbered", make_volume("uint8", (2, 4, 5)))
    tifffile.imwrite(unnumbered / "overview.tif", np.zeros((4, 5), np.uint8))
    expect_error(lambda: read_volume(unnumbered), "overview.tif", "no number in the file name")
    (tmp_path / "empty").mkdir()
    expect_error(lambda: read_volume(tmp_path / "empty"), str(tmp_path / "empty"), "no DICOM series and no")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    expect_error(lambda: read_volume(tmp_path / "notes"), "1 other file(s), e.g. readme.txt")


@pytest.mark.parametrize("keep", [0.97, 0.5, 0.05, 0.01])
def test_truncated_tiff(tmp_path, keep):
    path = tmp_path / "vol.tif"
    write_volume(make_volume("uint16"), VolumeMeta("tiff", SHAPE, np.uint16), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    expect_error(lambda: read_volume(path), str(path))
    expect_error(lambda: SlabReader(path), str(path))  # found up front, before any slab is read


def test_truncated_slice_file(tmp_path):
    folder = write_slices(tmp_path / "s", make_volume("uint16"))
    data = (folder / "scan0005.tif").read_bytes()
    (folder / "scan0005.tif").write_bytes(data[: len(data) // 2])
    expect_error(lambda: read_volume(folder), "scan0005.tif")


def test_unsupported_types(tmp_path):
    tifffile.imwrite(tmp_path / "complex.tif", np.zeros((3, 4, 5), np.complex64))
    expect_error(lambda: read_volume(tmp_path / "complex.tif"), "complex.tif", "unsupported data type complex64")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 4, 5, 3), np.uint8), photometric="rgb")
    expect_error(lambda: read_volume(tmp_path / "rgb.tif"), "rgb.tif", "(4, 5, 3)", "grey")
    rgb_slices = tmp_path / "rgb_slices"
    rgb_slices.mkdir()
    Image.new("RGB", (5, 4)).save(rgb_slices / "c_1.png")
    expect_error(lambda: read_volume(rgb_slices), "c_1.png", "PNG mode RGB")
    rgb = np.zeros((5, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nibabel.save(nibabel.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    expect_error(lambda: read_volume(tmp_path / "rgb.nii.gz"), "rgb.nii.gz", "3 components per voxel")
    nibabel.save(nibabel.Nifti1Image(np.zeros((5, 4, 3, 2), np.uint8), np.eye(4)), tmp_path / "4d.nii")
    expect_error(lambda: read_volume(tmp_path / "4d.nii"), "4d.nii", "4D", "expected a 3D volume")
    nibabel.save(nibabel.Nifti1Image(np.zeros((5, 4, 3), np.int64), np.eye(4), dtype=np.int64), tmp_path / "i64.nii")
    expect_error(lambda: read_volume(tmp_path / "i64.nii"), "i64.nii", "unsupported voxel type long")
    (tmp_path / "notes.txt").write_text("x")
    expect_error(lambda: read_volume(tmp_path / "notes.txt"), "notes.txt", "unsupported volume type")
    (tmp_path / "one.dcm").write_bytes(b"x")
    expect_error(lambda: read_volume(tmp_path / "one.dcm"), "one.dcm", "single DICOM file is not a volume")
    meta = VolumeMeta("tiff", SHAPE, np.uint8)
    expect_error(lambda: write_volume(np.zeros(SHAPE, np.complex64), meta, tmp_path / "c.tif"), "c.tif", "complex64")
    expect_error(lambda: write_volume(np.zeros(SHAPE, bool), meta, tmp_path / "b.nii"), "b.nii", "bool")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
@pytest.mark.parametrize("suffix", MEDICAL)
def test_truncated_medical_files(tmp_path, suffix, keep):
    path = tmp_path / f"v{suffix}"
    write_volume(make_volume("uint16"), meta_for(path, "uint16"), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    expect_error(lambda: read_volume(path), str(path))
    if suffix.startswith(".nii"):
        # ITK reads a cut-off NIfTI without complaint, with zeros for the missing voxels;
        # the file size (or gzip trailer) check finds it up front.
        expect_error(lambda: SlabReader(path), str(path))


def test_junk_medical_file(tmp_path):
    (tmp_path / "junk.mha").write_bytes(b"\0" * 100)
    expect_error(lambda: read_volume(tmp_path / "junk.mha"), "junk.mha", "ITK cannot read this file")


def test_missing_paths(tmp_path):
    for name in ("gone.nii.gz", "gone.tif", "gone_folder"):
        expect_error(lambda: read_volume(tmp_path / name), str(tmp_path / name), "does not exist")
        expect_error(lambda: SlabReader(tmp_path / name), "does not exist")


def test_bad_slice_ranges(tmp_path):
    path = write_volume(make_volume("uint8"), VolumeMeta("tiff", SHAPE, np.uint8), tmp_path / "v.tif")
    for bad in [(0, 7), (3, 3), (-1, 2), (4, 2)]:
        expect_error(lambda: read_volume(path, slices=bad), str(path), f"slices {bad} out of range", "has 6 slices")
    expect_error(lambda: read_volume(path, slices=(0.5, 2)), "pair of integers")
    with SlabReader(path) as reader:
        expect_error(lambda: reader.read(5, 9), "slices (5, 9) out of range")


def test_write_shape_mismatch(tmp_path):
    meta = dataclasses.replace(meta_for(tmp_path / "v.nrrd", "uint8"), source="/data/scan.nrrd")
    expect_error(
        lambda: write_volume(np.zeros((6, 20, 25), np.uint8), meta, tmp_path / "v.nrrd"),
        "v.nrrd", "(6, 20, 25)", "(6, 20, 24)", "/data/scan.nrrd",
    )
    assert tree(tmp_path) == []


def test_check_same_shape():
    image = VolumeMeta("nifti", SHAPE, np.int16, source="ct.nii.gz")
    check_same_shape(image, dataclasses.replace(image, source="ct_seg.nii.gz"))
    label = VolumeMeta("nifti", (6, 20, 23), np.uint8, source="ct_seg.nii.gz")
    expect_error(
        lambda: check_same_shape(image, label),
        "label ct_seg.nii.gz has shape (6, 20, 23) but image ct.nii.gz has (6, 20, 24)",
    )


def test_folder_with_two_dicom_series(tmp_path):
    write_dicom_series(tmp_path / "two", make_volume("uint16", (2, 4, 5)))
    write_dicom_series(tmp_path / "other", make_volume("uint16", (2, 6, 5)))
    for f in (tmp_path / "other").iterdir():
        shutil.move(f, tmp_path / "two" / f"B{f.name}")
    expect_error(lambda: read_volume(tmp_path / "two"), str(tmp_path / "two"), "holds 2 DICOM series")


# ---------------------------------------------------------------- real data


def real(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        pytest.skip(f"{path} not found in the real data folder")
    return path


@pytest.mark.real_data
def test_real_ct_nifti_round_trip(data_dir, tmp_path):
    path = real(data_dir, "ct_totalseg_example/images/example_ct.nii.gz")
    array, meta = read_volume(path)
    assert meta.format == "nifti" and array.shape == meta.shape == (112, 101, 122)  # NIfTI is 122x101x112 (x, y, z)
    assert meta.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(meta.direction, (-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS file, LPS in ITK
    out = write_volume(array, meta, output_path(path, tmp_path))
    assert out == tmp_path / "example_ct_seg.nii.gz"
    again, back = read_volume(out)
    np.testing.assert_array_equal(again, array)
    assert_geometry(back, meta)


@pytest.mark.real_data
def test_real_dicom_series_round_trip(data_dir, tmp_path):
    folder = real(data_dir, "ct_totalseg_example/images/example_ct_dicom")
    assert volume_format(folder) == "dicom"  # files named CT.1.3..., no extension
    array, meta = read_volume(folder)
    assert array.shape == meta.shape == (20, 512, 512) and array.dtype == np.int16
    np.testing.assert_allclose(meta.spacing, (2.0, 0.977, 0.977), atol=1e-3)
    with SlabReader(folder) as reader:
        np.testing.assert_array_equal(reader.read(5, 8), array[5:8])
    out = write_volume(array, meta, output_path(folder, tmp_path))
    assert out.name == "example_ct_dicom_seg.nii.gz"
    again, back = read_volume(out)
    np.testing.assert_array_equal(again, array)
    assert_geometry(back, meta)


@pytest.mark.real_data
def test_real_ptycho_slice_folders(data_dir, tmp_path):
    images = real(data_dir, "soc_ptycho/images")
    array, meta = read_volume(images, slices=(0, 3))
    assert array.shape == (3, 501, 501) and array.dtype == np.uint16
    assert meta.format == "slices" and meta.shape == (200, 501, 501)
    assert meta.slice_names[:2] == ["SOCprist0001.tiff", "SOCprist0002.tiff"]
    labels_path = real(data_dir, "soc_ptycho/labels")
    labels, label_meta = read_volume(labels_path, slices=(0, 3))
    assert labels.shape == (3, 501, 501) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 128, 255}
    assert label_meta.slice_names[0] == "slice__001.tif"
    check_same_shape(meta, label_meta)
    # Outputs mirror the input's names (three slices, to stay fast).
    first3 = dataclasses.replace(meta, shape=(3, 501, 501), slice_names=meta.slice_names[:3])
    out = write_volume((array > 30000).astype(np.uint8), first3, output_path(images, tmp_path))
    assert out == tmp_path / "images_seg"
    assert sorted(p.name for p in out.iterdir()) == ["SOCprist0001.tiff", "SOCprist0002.tiff", "SOCprist0003.tiff"]
