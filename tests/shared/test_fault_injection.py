"""Fault injection for the 2D bundles, output destinations, the manifest builders and checkpoints.

Every bad input must give exit status 2 (or, from a library call, an error) with
exactly one ``ERROR:`` line naming the file and the problem, no traceback and
nothing written; odd but valid inputs must give correct outputs. Most cases call
the config entry points in-process (``images_in``, ``staging_dir``); a few run
``python -m monai.bundle run`` as a user would, including a SIGKILL mid-run.
The 3D cases are in tests/tomography/test_volume_faults.py.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Callable

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from PIL import Image

from bundle_runs import run_bundle, run_bundle_in_process
from dicom_files import write_dicom
from faults import (
    assert_refused,
    break_gzip_crc,
    broken_link,
    expect_exit,
    float_tiff,
    grey,
    kill_when,
    link_loop,
    multipage_tiff,
    png_header,
    tree,
    truncate,
    write_nifti,
    write_png,
)
from xray_seg.chest.manifest import build_manifest
from xray_seg.cli.demo import bundle_command
from xray_seg.shared import image_checks, outputs
from xray_seg.shared.errors import UserError
from xray_seg.shared.handlers import StagedOutputs
from xray_seg.shared.inputs import images_in, staging_dir
from xray_seg.shared.outputs import check_output_dir, check_output_file, prepare_output_dir, publish_folder
from xray_seg.shared.splits import ManifestError, write_manifest

REPO = Path(__file__).resolve().parents[2]
LUNGS, ANATOMY = REPO / "bundle" / "cxr_lungs", REPO / "bundle" / "cxr_anatomy"


# ---------------------------------------------------------------- bad 2D inputs, in-process


def _multiframe_dicom(path: Path) -> Path:
    write_dicom(path, grey(dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([grey(dtype=np.uint16)] * 3).tobytes()
    ds.save_as(path)
    return path


def _jpeg(path: Path) -> Path:
    Image.fromarray(grey()).save(path, quality=90)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_broken_pixels(path: Path) -> Path:
    """A PNG whose chunks are all intact (checksums right, IEND present) around compressed
    pixel data that does not inflate: only decoding finds it."""
    header = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)  # 64 x 64, 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"\x00junk" * 50)
                     + _png_chunk(b"IEND", b""))
    return path


def _png_with_a_damaged_chunk(path: Path) -> Path:
    data = bytearray(write_png(path).read_bytes())
    data[60] ^= 0xFF  # inside the first IDAT chunk, after the 33-byte signature + IHDR
    path.write_bytes(bytes(data))
    return path


def _text(path: Path) -> Path:
    path.write_text("not an image\n")
    return path


# name of the bad file -> (how to make it, words of the problem)
BAD_2D: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated.png": (lambda p: truncate(write_png(p)), "cannot read image"),
    "damaged.png": (_png_with_a_damaged_chunk, "cannot read image"),
    "truncated.jpg": (lambda p: truncate(_jpeg(p), 0.3), "cannot read image"),
    "empty.png": (lambda p: p.write_bytes(b""), "cannot read image"),
    "text.png": (_text, "cannot read image"),
    "junk.dcm": (_text, "cannot read image"),
    "truncated.dcm": (lambda p: truncate(write_dicom(p, grey(dtype=np.uint16)), 0.6), "cannot read image"),
    "one_pixel.png": (lambda p: write_png(p, grey((1, 1))), "at least 16 pixels per side"),
    "thin.png": (lambda p: write_png(p, grey((8, 300))), "at least 16 pixels per side"),
    "one_pixel.nii.gz": (lambda p: write_nifti(p, np.ones((1, 1), np.float32)), "at least 16 pixels per side"),
    "pages.tif": (multipage_tiff, "3 pages or frames"),
    "frames.dcm": (_multiframe_dicom, "multi-frame DICOM (3 frames)"),
    "three_slices.nii.gz": (lambda p: write_nifti(p, np.ones((64, 64, 3), np.float32)), "not one 2D image"),
    "volume.nii": (lambda p: write_nifti(p, np.ones((64, 64, 20), np.int16)), "not one 2D image"),
    "nan.tif": (lambda p: float_tiff(p, np.nan), "NaN or infinite"),
    "inf.tif": (lambda p: float_tiff(p, np.inf), "NaN or infinite"),
    "nan.nii.gz": (lambda p: write_nifti(p, np.where(grey() > 250, np.nan, 1.0).astype(np.float32)), "NaN or infinite"),
    "crc.nii.gz": (lambda p: break_gzip_crc(write_nifti(p, grey().astype(np.float32))), "CRC check failed"),
    "cut.nii.gz": (lambda p: truncate(write_nifti(p, grey().astype(np.float32)), 0.7), "damaged gzip data"),
    "huge.png": (lambda p: png_header(p, 60000, 60000), "too large to decode"),
    "large.png": (lambda p: png_header(p, 12000, 12000), "above the limit of 100 megapixels"),
    "dangling.png": (broken_link, "broken symbolic link"),
    "loop.png": (link_loop, "symbolic link loop"),
}


def _good_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "good_a.png", grey(seed=1))
    write_png(folder / "good_b.png", grey(seed=2))
    return folder


@pytest.mark.parametrize("name", sorted(BAD_2D))
def test_bad_2d_input_is_refused_before_anything_is_written(name: str, tmp_path: Path, capsys) -> None:
    make, problem = BAD_2D[name]
    folder = _good_inputs(tmp_path / "in")
    make(folder / name)
    out = tmp_path / "out"
    expect_exit(lambda: images_in(str(folder), str(out)), capsys, name, problem)
    assert not out.exists()


@pytest.mark.parametrize(
    "setup, fragments",
    [
        (lambda d: write_png(d / "a.tif", grey()), ["a.png, a.tif", "share a file stem"]),
        (lambda d: [p.unlink() for p in d.iterdir()], ["no supported images"]),
        (lambda d: [p.rename(p.with_suffix(".bmp")) for p in d.iterdir()], ["no supported images", "a.bmp"]),
    ],
    ids=["stem-collision", "empty-folder", "only-unsupported"],
)
def test_bad_2d_folder_is_refused(setup, fragments, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    write_png(folder / "a.png")
    write_png(folder / "b.png")
    setup(folder)
    expect_exit(lambda: images_in(str(folder)), capsys, str(folder), *fragments)


def test_missing_input_folder(tmp_path: Path, capsys) -> None:
    expect_exit(lambda: images_in(str(tmp_path / "nowhere")), capsys, "nowhere", "does not exist")


def test_image_too_large_for_the_memory_available(tmp_path: Path, capsys, monkeypatch) -> None:
    folder = _good_inputs(tmp_path / "in")
    monkeypatch.setattr(image_checks, "available_memory", lambda: 100_000)
    expect_exit(lambda: images_in(str(folder)), capsys, "good_a.png", "of memory is available; not decoded")


# ---------------------------------------------------------------- output destinations


def _file_at(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file\n")
    return path


OUTPUT_DIRS = {
    "is-a-file": (lambda t: _file_at(t / "out"), "output folder exists and is not a folder"),
    "under-a-file": (lambda t: _file_at(t / "f") / "sub" / "out", "is a file, not a folder"),
    "dangling-link": (lambda t: broken_link(t / "out"), "output folder exists and is not a folder"),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_DIRS))
@pytest.mark.parametrize("entry", ["images_in", "staging_dir"])
def test_bad_output_folder_is_refused(case: str, entry: str, tmp_path: Path, capsys) -> None:
    make, problem = OUTPUT_DIRS[case]
    out = make(tmp_path)
    folder = _good_inputs(tmp_path / "in")
    before = tree(tmp_path)
    call = (lambda: images_in(str(folder), str(out))) if entry == "images_in" else (lambda: staging_dir(str(out)))
    expect_exit(call, capsys, str(out), problem)
    assert tree(tmp_path) == before


def test_unwritable_output_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    # As root every folder is writable, so the permission answer is simulated here;
    # test_unwritable_output_folder_for_real checks it where the tests run as a user.
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: Path(path) != tmp_path)
    expect_exit(lambda: staging_dir(str(tmp_path / "out")), capsys, "out", f"folder {tmp_path}", "is not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any folder")
def test_unwritable_output_folder_for_real(tmp_path: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    expect_exit(lambda: staging_dir(str(locked)), capsys, "locked", "is not writable")


def test_good_output_destinations_are_accepted_and_not_created(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_file(tmp_path / "new" / "m.json") == tmp_path / "new" / "m.json"
    assert not (tmp_path / "new").exists()


def test_output_file_destinations(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    _file_at(tmp_path / "f")
    for path, problem in [(tmp_path / "folder", "exists and is a folder"), (tmp_path / "f" / "m.json", "is a file")]:
        with pytest.raises(UserError, match=problem) as err:
            check_output_file(path)
        assert str(path) in str(err.value)


# ---------------------------------------------------------------- manifest builders (library)


def _chest_dataset(root: Path) -> Path:
    for i in range(6):
        write_png(root / "images" / f"case{i}.png", grey(seed=i))
        write_png(root / "masks" / f"case{i}.png", (grey(seed=i) > 127).astype(np.uint8) * 255)
    return root


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("case0.png", lambda p: write_png(p, grey((1, 1))), "at least 16 pixels per side"),
        ("case1.tif", lambda p: (p.with_suffix(".png").unlink(), multipage_tiff(p)), "pages or frames"),
        ("case2.tif", lambda p: (p.with_suffix(".png").unlink(), float_tiff(p, np.nan)), "NaN or infinite"),
        ("extra.png", broken_link, "broken symbolic link"),
    ],
    ids=["tiny", "multipage", "nan", "dangling-link"],
)
def test_chest_manifest_refuses_bad_images(name, make, problem, tmp_path: Path) -> None:
    root = _chest_dataset(tmp_path / "data")
    make(root / "images" / name)
    with pytest.raises(ManifestError) as err:
        build_manifest(root)
    assert name in str(err.value) and problem in str(err.value)


def test_write_manifest_checks_the_destination(tmp_path: Path) -> None:
    manifest = build_manifest(_chest_dataset(tmp_path / "data"))
    (tmp_path / "taken").mkdir()
    _file_at(tmp_path / "f")
    for bad in (tmp_path / "taken", tmp_path / "f" / "m.json"):
        with pytest.raises(UserError, match=str(bad)):
            write_manifest(bad, manifest)
    written = write_manifest(tmp_path / "new" / "m.json", manifest)
    assert json.loads(written.read_text())["numTest"] == manifest["numTest"]
    assert tree(tmp_path / "new") == ["m.json"]  # no temporary file left beside it


# ---------------------------------------------------------------- debris and all-or-nothing publishing


def test_stale_temporaries_are_removed_and_only_ours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ours = [".a_seg.png.k2j_x9ab.partial.png", ".vol_seg.nii.gz.abcdefgh.partial.nii.gz",
            ".vol_seg.mha.abcd1234.partial.raw", ".partial"]
    theirs = ["keep.png", ".hidden_notes", ".x.partial", "a.partial.png", ".vol.ABCDEFGH.partial"]
    for name in ours + theirs:
        _file_at(out / name)
    (out / ".stack_seg.q1w2e3r4.partial").mkdir()  # a slice folder being written
    _file_at(out / ".stack_seg.q1w2e3r4.partial" / "slice_0001.tif")
    prepare_output_dir(out)
    assert tree(out) == sorted(theirs)


def test_publishing_commits_in_one_rename_and_a_killed_publish_is_completed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging = Path(staging_dir(str(out)))
    for name in ("a_seg.png", "b_seg.png"):
        _file_at(staging / name)
    assert publish_folder(staging, out) == 2
    assert tree(out) == ["a_seg.png", "b_seg.png"]
    # A run killed after its commit (the rename to .publishing) but during the moves:
    _file_at(out / ".publishing" / "c_seg.png")
    _file_at(out / ".publishing" / "d_seg.png")
    os.replace(out / ".publishing" / "c_seg.png", out / "c_seg.png")
    prepare_output_dir(out)  # the next run completes it first
    assert tree(out) == ["a_seg.png", "b_seg.png", "c_seg.png", "d_seg.png"]


def test_publishing_a_folder_replaces_the_one_of_an_earlier_run(tmp_path: Path) -> None:
    """A volume given as a folder of slices has a folder of label slices as its output
    (xray_tomography's multi_gpu_inference.yaml stages and publishes it like a file)."""
    out = tmp_path / "out"
    for slices, run in ((["slice_1.tif", "slice_2.tif"], "first"), (["slice_1.tif"], "second")):
        staging = Path(staging_dir(str(out)))
        for name in slices:
            _file_at(staging / "stack_seg" / name).write_text(run)
        _file_at(staging / "vol_seg.tif").write_text(run)
        assert publish_folder(staging, out) == 2
    assert tree(out) == ["stack_seg", "stack_seg/slice_1.tif", "vol_seg.tif"]
    assert (out / "stack_seg" / "slice_1.tif").read_text() == (out / "vol_seg.tif").read_text() == "second"


def test_staged_outputs_publish_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    staged = StagedOutputs(staging_dir(str(out)), str(out))

    def step(engine, item):
        _file_at(Path(staged.staging_dir) / f"{item}_seg.png")
        if item == "c":
            raise RuntimeError("killed")

    failing, succeeding = Engine(step), Engine(step)
    staged.attach(failing)
    with pytest.raises(RuntimeError):
        failing.run(["a", "b", "c"])
    assert tree(out) == []
    staged.attach(succeeding)
    succeeding.run(["a", "b"])
    assert tree(out) == ["a_seg.png", "b_seg.png"]


# ---------------------------------------------------------------- checkpoints carrying code


class Payload:
    """Unpickling this would run code: it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_a_pickled_object_is_refused_by_every_loader(tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 2)
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "model.pt"
    torch.save({"model": network.state_dict(), "extra": Payload(marker)}, ckpt)
    # MONAI's CheckpointLoader, as every bundle config uses it:
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        CheckpointLoader(load_path=str(ckpt), load_dict={"model": network})(Engine(lambda e, b: None))
    # torch.load as the tomography inference config and our own code call it:
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not marker.exists()
    torch.save({"model": network.state_dict()}, ckpt)  # the same checkpoint without code loads
    CheckpointLoader(load_path=str(ckpt), load_dict={"model": network})(Engine(lambda e, b: None))


def test_every_torch_load_is_weights_only() -> None:
    sources = [*sorted((REPO / "scripts").rglob("*.py")), *sorted((REPO / "bundle").rglob("*.yaml"))]
    calls = [(path, line) for path in sources for line in path.read_text().splitlines() if "torch.load(" in line]
    assert calls, "no torch.load found: the search is broken"
    unsafe = [f"{path.relative_to(REPO)}: {line.strip()}" for path, line in calls if "weights_only=True" not in line]
    assert not unsafe, unsafe


# ---------------------------------------------------------------- whole bundle runs


def test_lungs_bundle_refuses_an_output_folder_that_is_a_file(tmp_path: Path) -> None:
    folder = _good_inputs(tmp_path / "in")
    out = _file_at(tmp_path / "out")
    result = run_bundle(LUNGS, ["inference.yaml"], 2, dataset_dir=folder, output_dir=out)
    assert_refused(result.stderr, str(out), "not a folder")
    assert out.read_text() == "a file\n"


def test_anatomy_bundle_refuses_a_bad_input_among_good_ones(tmp_path: Path) -> None:
    folder = _good_inputs(tmp_path / "in")
    write_nifti(folder / "three_slices.nii.gz", np.ones((64, 64, 3), np.float32))
    result = run_bundle(ANATOMY, ["inference.yaml"], 2, dataset_dir=folder, output_dir=tmp_path / "out")
    assert_refused(result.stderr, "three_slices.nii.gz", "not one 2D image")
    assert not (tmp_path / "out").exists()


def test_lungs_bundle_names_a_png_that_passes_the_check_but_does_not_decode(tmp_path: Path) -> None:
    """PNGs are checked up front from their checksums only (decoded once, in the pipeline):
    one whose pixels do not decode still stops the run with one ERROR: line naming it, exit
    status 2, through the DataLoader worker, and nothing is published."""
    folder = _good_inputs(tmp_path / "in")
    _png_with_broken_pixels(folder / "zz_broken.png")
    assert len(images_in(str(folder))) == 3  # passes the up-front check
    out = tmp_path / "out"
    result = run_bundle(LUNGS, ["inference.yaml"], 2, dataset_dir=folder, output_dir=out, num_workers=1)
    assert_refused(result.stderr, "zz_broken.png", "cannot read image")
    assert not out.exists() or not any(out.iterdir())


def _odd_valid_inputs(folder: Path, count: int) -> dict[str, tuple[int, int]]:
    """Valid but unusual images, plus plain ones up to ``count``; name -> (height, width)."""
    folder.mkdir(parents=True)
    rgba = np.dstack([grey((40, 50), 3)] * 3 + [np.full((40, 50), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(grey((70, 60), 4, np.uint16)).save(folder / "sixteen_bit.png")
    Image.fromarray(grey((48, 48), 5)).convert("P").save(folder / "palette.png")
    write_png(folder / "smallest.png", grey((16, 16), 6))
    write_png(folder / "rön_ç✓.png", grey((33, 65), 7))
    write_dicom(folder / "inverted.dcm", grey((64, 40), 8, np.uint16), photometric="MONOCHROME1")
    write_nifti(folder / "flat.nii.gz", grey((30, 20), 9).astype(np.float32)[:, :, None])
    sizes = {"rgba": (40, 50), "sixteen_bit": (70, 60), "palette": (48, 48), "smallest": (16, 16),
             "rön_ç✓": (33, 65), "inverted": (64, 40), "flat": (30, 20)}
    for i in range(count - len(sizes)):
        write_png(folder / f"plain{i:03d}.png", grey((96, 80), 10 + i))
        sizes[f"plain{i:03d}"] = (96, 80)
    return sizes


def test_lungs_inference_killed_mid_run_leaves_nothing_and_the_next_run_succeeds(tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    sizes = _odd_valid_inputs(folder, 8)
    cmd = bundle_command(["inference.yaml"], bundle=LUNGS, dataset_dir=folder, output_dir=out)
    staging = out / ".partial"
    killed_after = kill_when(cmd, lambda: staging.is_dir() and len(list(staging.iterdir())) >= 2)
    assert not [name for name in tree(out) if not name.startswith(".")], "visible output after the kill"
    assert ".partial" in tree(out)  # the debris the next run must clean
    run_bundle_in_process(LUNGS, ["inference.yaml"], dataset_dir=folder, output_dir=out)
    written = tree(out)
    names = {stem: f"{stem}_seg.nii.gz" if stem == "flat" else f"{stem}_seg.png" for stem in sizes}
    assert written == sorted([*names.values(), "qc.csv"]), written  # all, and no debris
    for stem, size in sizes.items():
        path = out / names[stem]
        mask = np.squeeze(nibabel.load(path).get_fdata()) if stem == "flat" else np.asarray(Image.open(path))
        assert mask.shape == size and set(np.unique(mask)) <= {0, 1}, stem
    print(f"killed after {killed_after:.1f} s")
