"""Fault injection for the tomography bundle and the slab manifest builder.

Bad volumes are refused by the config entry point ``volume_items`` before anything
is written, or, for what only streaming reveals (non-finite voxels), during the run
with the volume's temporary output removed. Each refusal: exit status 2 (or the
library error), one ``ERROR:`` line naming the file and the problem, no traceback.
A SIGKILL mid-run leaves no visible output and the next run cleans the debris.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import itk
import nibabel
import numpy as np
import pytest
import tifffile
import torch
from monai.data import list_data_collate
from monai.inferers import SlidingWindowInferer

from bundle_runs import run_bundle, run_bundle_in_process
from dicom_files import write_dicom_series
from faults import assert_refused, break_gzip_crc, broken_link, expect_exit, kill_when, link_loop, tree, truncate
from xray_seg.cli.demo import bundle_command
from xray_seg.tomography import inference
from xray_seg.tomography.inference import VolumeSegmenter, volume_items
from xray_seg.tomography.slab_manifest import build_slab_manifest
from xray_seg.tomography.transforms import LoadVolumed
from xray_seg.tomography.volume_io import VolumeMeta, read_volume, write_volume
from xray_seg.shared.splits import ManifestError

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle" / "xray_tomography"
SHAPE = (12, 24, 20)


def volume(dtype: str = "uint16", shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, size=shape).astype(dtype)


def write(path: Path, array: np.ndarray | None = None) -> Path:
    array = volume() if array is None else array
    if path.suffix == ".mhd":  # our writer makes .mha only
        path.parent.mkdir(parents=True, exist_ok=True)
        itk.imwrite(itk.image_from_array(np.ascontiguousarray(array)), str(path))
        return path
    return write_volume(array, VolumeMeta("nifti", array.shape, array.dtype), path)


def flip_middle_byte(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    return path


def damaged_dicom_series(folder: Path, stray: bool = False) -> Path:
    write_dicom_series(folder, volume(shape=(6, 16, 16)))
    if stray:
        (folder / "notes.txt").write_text("scanner notes\n")
    else:  # a slice whose header is garbage after the DICOM preamble
        victim = sorted(folder.iterdir())[2]
        victim.write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    return folder


def nan_volume(path: Path, bad: float = np.nan) -> Path:
    array = volume("float32")
    array[9, 3, 4] = bad  # in the last slab, found only while streaming
    if path.suffix == ".tif":
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, array)
        return path
    return write(path, array)


# input name -> (how to make it, words of the problem)
BAD_3D: dict[str, tuple[Callable[[Path], object], str]] = {
    "cut.nii": (lambda p: truncate(write(p)), "truncated"),
    "crc.nii.gz": (lambda p: break_gzip_crc(write(p)), "CRC check failed"),
    "crc_float.nii.gz": (lambda p: break_gzip_crc(write(p, volume("float32"))), "CRC check failed"),
    "nan.nii": (nan_volume, "1 of 5760 pixel values are NaN or infinite"),
    "neg_inf.nii.gz": (lambda p: nan_volume(p, -np.inf), "(ITK would read them as 0)"),
    "cut.nii.gz": (lambda p: truncate(write(p), 0.6), "damaged gzip data"),
    "flipped.nii.gz": (lambda p: flip_middle_byte(write(p)), "damaged gzip data"),
    "four_d.nii.gz": (lambda p: nibabel.save(nibabel.Nifti1Image(np.ones((8, 8, 4, 2), np.int16), np.eye(4)), p),
                      "expected a 3D volume"),
    "junk.nrrd": (lambda p: p.write_text("not a volume\n"), "ITK cannot read this file"),
    "rgb.tif": (lambda p: tifffile.imwrite(p, np.zeros((3, 16, 16, 3), np.uint8), photometric="rgb"),
                "one grey 2D image per page"),
    "cut.tif": (lambda p: (tifffile.imwrite(p, volume()), truncate(p, 0.5)), "truncated"),
    "dangling.nii": (broken_link, "broken symbolic link"),
    "loop.mha": (link_loop, "symbolic link loop"),
    "series": (damaged_dicom_series, "1 of 6 files are not readable slices of the DICOM series"),
    "series_with_notes": (lambda p: damaged_dicom_series(p, stray=True), "notes.txt"),
    "stack_with_gap": (lambda p: [tifffile.imwrite(p / f"s{i:03d}.tif", volume(shape=(1, 16, 16))[0])
                                  for i in (1, 2, 4) if not p.mkdir(exist_ok=True)], "gaps"),
    "stack_with_link": (lambda p: (p.mkdir(), tifffile.imwrite(p / "s001.tif", np.zeros((16, 16), np.uint8)),
                                   broken_link(p / "s002.tif")), "s002.tif: broken symbolic link"),
}


@pytest.mark.parametrize("name", sorted(BAD_3D))
def test_bad_volume_is_refused_before_anything_is_written(name: str, tmp_path: Path, capsys) -> None:
    make, problem = BAD_3D[name]
    folder = tmp_path / "in"
    write(folder / "good.nii.gz")
    make(folder / name)
    out = tmp_path / "out"
    expect_exit(lambda: volume_items(str(folder), str(out)), capsys, name, problem)
    assert not out.exists()


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda d: (write(d / "x.mha"), write(d / "x.mhd")), ["x.mha, x.mhd", "same name"]),
        (lambda d: (write_dicom_series(d / "x", volume(shape=(3, 16, 16))), write(d / "x.nii.gz")),
         ["x, x.nii.gz", "same name"]),
        (lambda d: None, ["holds no volumes"]),
    ],
    ids=["mha-and-mhd", "dicom-and-nifti", "empty"],
)
def test_bad_volume_folder_is_refused(make, fragments, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    make(folder)
    expect_exit(lambda: volume_items(str(folder)), capsys, str(folder), *fragments)


def test_volume_that_must_be_read_whole_is_refused_when_memory_is_short(tmp_path: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "in"
    write(folder / "streams.nii")
    monkeypatch.setattr(inference, "available_memory", lambda: 1000)
    assert len(volume_items(str(folder))) == 1  # uncompressed NIfTI is read slab by slab
    write(folder / "whole.nii.gz")
    expect_exit(lambda: volume_items(str(folder)), capsys, "whole.nii.gz", "does not stream", "uncompressed .nii")


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file"])
def test_bad_output_folder_is_refused_by_both_entry_points(where: str, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    write(folder / "good.nii")
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "is-a-file" else tmp_path / "f" / "out"
    expect_exit(lambda: volume_items(str(folder), str(out)), capsys, str(out), "not a folder")
    items = volume_items(str(folder))
    expect_exit(lambda: VolumeSegmenter(items, str(out), Pointwise(), SlidingWindowInferer((8, 16, 16))), capsys,
                str(out), "not a folder")


class Pointwise(torch.nn.Module):
    """Classifies each voxel by its own intensity (no weights to load)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-(x - 0.0).abs(), -(x - 0.5).abs(), -(x - 1.0).abs()], dim=1)


# NIfTI is scanned up front (ITK would read non-finite voxels as 0); other formats while streaming.
@pytest.mark.parametrize("name, bad", [("nan.mha", np.nan), ("inf.tif", np.inf), ("neg_inf.nrrd", -np.inf)])
def test_non_finite_voxels_stop_the_run_and_leave_nothing(name: str, bad: float, tmp_path: Path, capsys) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    nan_volume(folder / name, bad)
    engine = VolumeSegmenter(volume_items(str(folder), str(out)), str(out), Pointwise(),
                             SlidingWindowInferer((4, 16, 16)), slab_depth=4, halo=1)
    expect_exit(engine.run, capsys, name, "1 of", "slices 7..11", "NaN or infinite")
    assert tree(out) == []  # not even the temporary file


# ---------------------------------------------------------------- valid odd inputs


def test_odd_but_valid_volumes_are_accepted(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "in"
    write(folder / "a.mha")
    write(folder / "b.mhd")  # its .raw beside it is not a volume
    write(folder / "c.nii", volume("int8"))
    write_dicom_series(folder / "d", volume(shape=(3, 16, 16)))
    assert [Path(i["image"]).name for i in volume_items(str(folder))] == ["a.mha", "b.mhd", "c.nii", "d"]


def _nifti_dataset(root: Path, n: int = 5) -> Path:
    for i in range(n):
        write(root / "images" / f"vol{i}.nii.gz", volume(seed=i))
        write(root / "labels" / f"vol{i}.nii.gz", (volume(seed=i) % 3).astype(np.uint8))
    return root


def test_slab_manifest_on_a_folder_of_nifti_volumes_and_whole_volumes_collate(tmp_path: Path) -> None:
    root = _nifti_dataset(tmp_path / "data")
    manifest = build_slab_manifest(root, val_fraction=0.2, test_fraction=0.2)
    assert (manifest["numTraining"], manifest["numValidation"], manifest["numTest"]) == (3, 1, 1)
    assert "slices" not in manifest["training"][0]
    load = LoadVolumed(keys=["image", "label"])
    items = [load({k: str(root / v) for k, v in item.items()}) for item in manifest["training"]]
    batch = list_data_collate(items)  # crashed on "slices": None
    assert batch["image"].shape == (3, 1, *SHAPE)
    assert [list(map(int, s)) for s in zip(*batch["image"].meta["slices"])] == [[0, SHAPE[0]]] * 3
    json.dumps(manifest)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda r: break_gzip_crc(r / "labels" / "vol3.nii.gz"), "CRC check failed"),
        (lambda r: broken_link(r / "images" / "vol9.nii"), "broken symbolic link"),
    ],
    ids=["crc-label", "dangling-link"],
)
def test_slab_manifest_refuses_damaged_volumes(make, fragment, tmp_path: Path) -> None:
    root = _nifti_dataset(tmp_path / "data")
    make(root)
    with pytest.raises(ManifestError, match=fragment) as err:
        build_slab_manifest(root)
    assert "vol" in str(err.value)


def test_slab_manifest_refuses_a_damaged_dicom_series(tmp_path: Path) -> None:
    root = tmp_path / "data"
    damaged_dicom_series(root / "images")
    write_dicom_series(root / "labels", volume(shape=(6, 16, 16)))
    with pytest.raises(ManifestError, match="not readable slices of the DICOM series"):
        build_slab_manifest(root)


# ---------------------------------------------------------------- whole bundle runs


def test_bundle_stops_on_non_finite_voxels_mid_run(tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    nan_volume(folder / "scan.tif")
    result = run_bundle(BUNDLE, ["inference.yaml"], 2, dataset_dir=folder, output_dir=out, slab_depth=4, halo=2)
    assert_refused(result.stderr, "scan.tif", "NaN or infinite")
    assert tree(out) == []


def test_inference_killed_mid_run_leaves_nothing_and_the_next_run_succeeds(tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    image = volume(shape=(16, 48, 48))
    write(folder / "scan.nii", image)
    settings = dict(dataset_dir=folder, output_dir=out, slab_depth=8, halo=4)
    temporary = lambda: any(p.name.startswith(".scan_seg.nii.") for p in out.glob(".*"))  # noqa: E731
    kill_when(bundle_command(["inference.yaml"], bundle=BUNDLE, **settings), temporary)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    assert temporary()  # the debris a SIGKILL leaves
    run_bundle_in_process(BUNDLE, ["inference.yaml"], **settings)
    assert tree(out) == ["scan_seg.nii"]
    labels, _ = read_volume(out / "scan_seg.nii")
    assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 1, 2}
