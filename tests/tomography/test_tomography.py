"""Tomography building blocks: slab manifests, volume transforms, boundary
accuracy, and streaming slab-by-slab inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import SlidingWindowInferer

from xray_seg.tomography import inputs as tomo_inputs
from xray_seg.shared.errors import UserError
from xray_seg.shared.splits import ManifestError
from xray_seg.cli.main import main as cli
from xray_seg.tomography.slab_manifest import build_slab_manifest, slab_ranges
from xray_seg.tomography.evaluation import boundary_accuracy, boundary_band, scores
from xray_seg.tomography.inference import (
    SLAB_VOXELS,
    auto_slab_depth,
    find_volumes,
    labels_of,
    segment_folder,
    segment_volume,
    slab_depth_for,
    window_stride,
)
from xray_seg.tomography.transforms import LoadVolumed, RecordIntensityRanged, ScaleFromRanged, ZSlices, intensity_range
from xray_seg.tomography.volume_io import SlabReader, VolumeError, read_volume


def write_stack(folder: Path, volume: np.ndarray, pattern: str = "slice_{:04d}.tif") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(volume, start=1):
        tifffile.imwrite(folder / pattern.format(z), plane)
    return folder


def phantom(shape: tuple[int, int, int] = (30, 20, 24), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three phases in blocks with noise: uint16 image, labels 0/128/255 like soc_ptycho."""
    rng = np.random.default_rng(seed)
    classes = np.zeros(shape, np.uint8)
    classes[:, :, shape[2] // 3:] = 1
    classes[:, :, 2 * shape[2] // 3:] = 2
    image = (20000 + 10000 * classes.astype(np.float64) + rng.normal(0, 800, shape)).clip(0, 65535).astype(np.uint16)
    return image, (classes * 127.5).round().astype(np.uint8)


def manifest_main(stack: Path, out: Path) -> int:
    """``xray-seg manifest volumes`` with two-slice gaps: its exit status."""
    return cli(["manifest", "volumes", "--dataset_dir", str(stack), "--output_file", str(out), "--gap", "2"])


@pytest.fixture()
def stack(tmp_path: Path) -> Path:
    image, labels = phantom()
    write_stack(tmp_path / "data" / "images", image)
    write_stack(tmp_path / "data" / "labels", labels, "label_{:03d}.tif")
    return tmp_path / "data"


# --- slab manifests ---------------------------------------------------------------


@pytest.mark.parametrize("depth,gap", [(200, 8), (30, 2), (12, 0)])
def test_slab_ranges_are_disjoint_ordered_and_gapped(depth: int, gap: int) -> None:
    r = slab_ranges(depth, 0.1, 0.2, gap)
    assert r["training"][0] == 0 and r["testing"][1] == depth
    assert r["validation"][0] - r["training"][1] == gap
    assert r["testing"][0] - r["validation"][1] == gap
    assert all(b > a for a, b in r.values())


def test_slab_ranges_reject_a_volume_too_thin_for_the_gaps() -> None:
    with pytest.raises(ManifestError, match="cannot hold"):
        slab_ranges(10, 0.1, 0.2, 4)


def test_slab_manifest_of_a_slice_stack(stack: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert manifest_main(stack, out) == 0
    manifest = json.loads(out.read_text())
    assert manifest["tensorImageSize"] == "3D"
    train, val, test = (manifest[s][0] for s in ("training", "validation", "testing"))
    assert train["image"] == "images" and train["label"] == "labels"
    assert val["slices"][0] - train["slices"][1] == 2 and test["slices"][1] == 30
    items = tomo_inputs.volume_cases(str(out), str(stack), "testing", [0, 128, 255])
    assert items[0]["slices"] == test["slices"] and Path(items[0]["image"]).is_absolute()


def test_slab_manifest_names_label_stack_of_another_shape(stack: Path) -> None:
    (stack / "labels" / "label_030.tif").unlink()
    with pytest.raises(ManifestError, match="labels"):
        build_slab_manifest(stack)


def test_slab_manifest_splits_several_volume_files(tmp_path: Path) -> None:
    for i in range(5):
        image, labels = phantom((6, 8, 9), seed=i)
        for folder, array in (("images", image), ("labels", labels)):
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"vol{i}.tif", array)
    manifest = build_slab_manifest(tmp_path, val_fraction=0.2, test_fraction=0.2)
    names = [e["image"] for s in ("training", "validation", "testing") for e in manifest[s]]
    assert sorted(names) == [f"images/vol{i}.tif" for i in range(5)]
    assert all("slices" not in e for e in manifest["training"])


def test_volume_cases_stops_on_unexpected_label_values(stack: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.json"
    assert manifest_main(stack, out) == 0
    with pytest.raises(SystemExit) as exit_info:
        tomo_inputs.volume_cases(str(out), str(stack), "training", [0, 1, 2])
    assert exit_info.value.code == 2
    assert "outside the expected [0, 1, 2]" in capsys.readouterr().err


# --- transforms ---------------------------------------------------------------------


def test_load_volume_reads_a_slab_and_maps_label_values(stack: Path) -> None:
    d = LoadVolumed(keys=["image", "label"], label_values=[0, 128, 255])(
        {"image": str(stack / "images"), "label": str(stack / "labels"), "slices": [5, 9]}
    )
    assert d["image"].shape == (1, 4, 20, 24) and d["image"].dtype == torch.float32
    assert sorted(torch.unique(d["label"]).tolist()) == [0, 1, 2]
    full, _ = read_volume(stack / "images")
    np.testing.assert_array_equal(d["image"][0].numpy(), full[5:9])


def test_load_volume_rejects_unknown_label_values(stack: Path) -> None:
    with pytest.raises(VolumeError, match=r"values \[128, 255\]"):
        LoadVolumed(keys=["label"], label_values=[0, 1, 2])({"label": str(stack / "labels")})


def test_noise_in_raw_units_does_not_change_the_scaling() -> None:
    volume = torch.linspace(16000, 46000, 1000).reshape(1, 10, 10, 10)
    d = RecordIntensityRanged(keys="image")({"image": volume})
    lo, hi = d["image_range"]
    assert lo == pytest.approx(16150, rel=1e-3) and hi == pytest.approx(45850, rel=1e-3)
    d["image"] = d["image"] + 5000.0  # what noise or a shift in raw units does
    scaled = ScaleFromRanged(keys="image")(d)["image"]
    assert float(scaled.min()) == pytest.approx((21000 - lo) / (hi - lo), rel=1e-4)


def test_intensity_range_of_a_constant_volume_is_not_empty() -> None:
    lo, hi = intensity_range(np.full((4, 4, 4), 7, np.uint16))
    assert hi > lo


def test_z_slices_are_evenly_spaced_planes() -> None:
    planes = ZSlices(3)(torch.arange(8.0).reshape(1, 8, 1, 1).expand(1, 8, 2, 3))
    assert [tag for tag, _ in planes] == ["z=2", "z=4", "z=5"]
    assert planes[0][1].shape == (1, 2, 3) and float(planes[0][1][0, 0, 0]) == 2.0


# --- boundary accuracy ---------------------------------------------------------------


def test_boundary_band_hugs_the_interface() -> None:
    labels = np.zeros((3, 6, 10), np.uint8)
    labels[..., 5:] = 1
    band = boundary_band(labels, width=1)
    assert band[..., 4:6].all() and not band[..., :4].any() and not band[..., 6:].any()


def test_boundary_accuracy_counts_errors_at_the_interface() -> None:
    truth = np.zeros((3, 6, 10), np.uint8)
    truth[..., 5:] = 1
    pred = truth.copy()
    pred[..., 5] = 0  # the interface moved by one voxel
    result = boundary_accuracy(pred, truth)
    assert result["boundary_accuracy"] == pytest.approx(0.5) and result["interior_accuracy"] == 1.0
    report = scores(pred, truth, ["a", "b"])
    assert report["confusion_matrix"]["counts"][1][0] == 18 and report["accuracy"] == pytest.approx(0.9)


# --- streaming inference ------------------------------------------------------------


class Pointwise(torch.nn.Module):
    """Classifies each voxel by its own intensity: any window grid gives the same labels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-(x - 0.0).abs(), -(x - 0.5).abs(), -(x - 1.0).abs()], dim=1)


class RecordingReader(SlabReader):
    spans: list[int] = []

    def read(self, z0: int, z1: int) -> np.ndarray:
        RecordingReader.spans.append(z1 - z0)
        return super().read(z0, z1)


def test_streaming_matches_a_whole_volume_pass_and_reads_bounded_slabs(stack: Path, tmp_path: Path, monkeypatch) -> None:
    image, _ = read_volume(stack / "images")
    inferer = SlidingWindowInferer(roi_size=(8, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    monkeypatch.setattr("xray_seg.tomography.inference.SlabReader", RecordingReader)
    out = segment_volume(stack / "images", tmp_path / "out" / "images_seg", Pointwise(), inferer,
                         slab_depth=7, halo=4, progress=False)
    labels, meta = read_volume(out)
    assert labels.shape == image.shape and meta.format == "slices"
    # The reads for inference (not the percentile sample) never exceed slab + 2 halos.
    assert max(RecordingReader.spans) <= 7 + 2 * 4
    lo, hi = intensity_range(image)
    x = torch.from_numpy(image.astype(np.float32))
    expected = Pointwise()((x[None, None] - lo) / (hi - lo))[0].argmax(0).numpy()
    np.testing.assert_array_equal(labels, expected)


def test_streaming_a_convolutional_net_agrees_with_the_whole_volume(stack: Path, tmp_path: Path) -> None:
    # A 3x3x3 mean filter before the voxel classifier: labels depend on neighbours
    # across slab borders, so a missing or misplaced halo would change them.
    smooth = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.constant_(smooth.weight, 1 / 27)
    net = torch.nn.Sequential(smooth, Pointwise())
    inferer = SlidingWindowInferer(roi_size=(8, 16, 16), sw_batch_size=2, overlap=0.5, mode="gaussian")
    out = segment_volume(stack / "images", tmp_path / "seg", net, inferer, slab_depth=10, halo=4, progress=False)
    streamed, _ = read_volume(out)
    image, _ = read_volume(stack / "images")
    lo, hi = intensity_range(image)
    with torch.no_grad():
        whole = inferer((torch.from_numpy(image.astype(np.float32))[None, None] - lo) / (hi - lo), net)[0].argmax(0)
    assert (streamed == whole.numpy()).mean() > 0.995


def test_auto_slab_depth_fills_the_voxel_budget_in_whole_window_steps() -> None:
    assert window_stride(SlidingWindowInferer(roi_size=(32, 96, 96), overlap=0.25)) == 24
    assert window_stride(SlidingWindowInferer(roi_size=(32, 96, 96), overlap=0.5)) == 16
    assert window_stride(lambda x, net: net(x)) == 1  # no window: no rounding
    assert auto_slab_depth((512, 1024, 1024), SLAB_VOXELS, 24) == 144  # the former fixed depth
    assert auto_slab_depth((256, 256, 256), SLAB_VOXELS, 24) == 2304  # such a volume is one slab
    assert auto_slab_depth((200, 501, 501), SLAB_VOXELS, 24) == 600  # 601 rounded down to the stride
    assert auto_slab_depth((9, 4096, 4096), SLAB_VOXELS, 24) == 9  # under one stride: not rounded to 0
    assert auto_slab_depth((9, 8192, 8192), 1000, 24) == 1
    with pytest.raises(ValueError):
        auto_slab_depth((9, 16, 16), 0)
    bundle_like = SlidingWindowInferer(roi_size=(32, 96, 96), overlap=0.25)
    assert slab_depth_for((512, 1024, 1024), bundle_like) == 144  # what segment_volume uses by default
    assert slab_depth_for((512, 1024, 1024), bundle_like, slab_depth=7) == 7  # a given depth wins


def test_default_slabs_follow_the_voxel_budget_with_the_same_labels(stack: Path, tmp_path: Path, monkeypatch) -> None:
    image, _ = read_volume(stack / "images")
    depth, area = image.shape[0], image.shape[1] * image.shape[2]
    inferer = SlidingWindowInferer(roi_size=(4, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    monkeypatch.setattr("xray_seg.tomography.inference.SlabReader", RecordingReader)
    labels = {}
    for name, budget in (("thin", 7 * area), ("whole", 10 * depth * area)):
        RecordingReader.spans = []
        out = segment_volume(stack / "images", tmp_path / name / "seg", Pointwise(), inferer, slab_voxels=budget,
                             halo=4, progress=False)
        labels[name] = read_volume(out)[0]
        inference_reads = [n for n in RecordingReader.spans if n > 1]  # not the 1-slice percentile sample
        if name == "thin":  # 7 slices -> 6, a multiple of the window stride (3), plus two halos
            assert max(inference_reads) == 6 + 2 * 4 and len(inference_reads) == -(-depth // 6)
        else:  # the whole volume in one slab, no halo
            assert inference_reads == [depth]
    np.testing.assert_array_equal(labels["thin"], labels["whole"])


def test_segment_folder_checks_every_input_before_writing(stack: Path, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    image, _ = read_volume(stack / "images")
    tifffile.imwrite(inputs / "a_good.tif", image)
    (inputs / "b_bad.tif").write_bytes((inputs / "a_good.tif").read_bytes()[:3000])
    assert [p.name for p in find_volumes(inputs)] == ["a_good.tif", "b_bad.tif"]
    inferer = SlidingWindowInferer(roi_size=(8, 16, 16))
    with pytest.raises(SystemExit) as exit_info:
        segment_folder(str(inputs), str(tmp_path / "out"), Pointwise(), inferer)
    assert exit_info.value.code == 2
    assert "b_bad.tif" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_segment_folder_writes_the_input_format(stack: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    image, _ = read_volume(stack / "images")
    write_stack(inputs / "stack", image)
    tifffile.imwrite(inputs / "multi.tif", image)
    written = segment_folder(str(inputs), str(tmp_path / "out"), Pointwise(), SlidingWindowInferer(roi_size=(8, 16, 16)),
                             slab_depth=16, halo=4)
    assert sorted(p.name for p in written) == ["multi_seg.tif", "stack_seg"]
    assert (tmp_path / "out" / "stack_seg").is_dir() and len(list((tmp_path / "out" / "stack_seg").iterdir())) == 30
    a, _ = read_volume(tmp_path / "out" / "multi_seg.tif")
    b, _ = read_volume(tmp_path / "out" / "stack_seg")
    np.testing.assert_array_equal(a, b)


# --- experiment and benchmark scripts -------------------------------------------------


def test_experiment_arms_cover_noise_size_and_dimensions(tmp_path: Path, monkeypatch) -> None:
    from xray_seg.studies import tomo_experiments

    arms = tomo_experiments.arms([5, 105], {"noise", "size", "dims"}, epochs=4, budget_s=60.0)
    assert [a["name"] for a in arms] == ["3d_no_noise", "3d_noise", "3d_5_slices", "3d_105_slices", "2d_slicewise", "3d"]
    assert arms[0]["train"] == {"num_epochs": 4, "val_interval": 4, "noise_prob": 0.0}
    assert arms[4]["configs"] == ["slicewise.yaml"] and arms[4]["train"]["time_limit_s"] == arms[5]["train"]["time_limit_s"] == 60
    manifest = json.loads(tomo_experiments._subset_manifest(tmp_path, 5).read_text())
    start = manifest["training"][0]["slices"][0]
    assert manifest["training"][0]["slices"] == [start, start + 5]
    with pytest.raises(UserError, match="fewer than 1000"):
        tomo_experiments._subset_manifest(tmp_path, 1000)


def test_experiment_table_and_plot_are_written(tmp_path: Path) -> None:
    from xray_seg.studies.tomo_experiments import plot, write_table

    row = dict(train_wall_s=10, dice_clean=0.98, dice_noisy=0.9, boundary_accuracy_clean=0.9,
               boundary_accuracy_noisy=0.8, baseline_dice=0.97)
    results = [dict(row, name=f"3d_{n}_slices", group="size", slices=n) for n in (5, 25)]
    results.append(dict(row, name="2d_slicewise", group="dims"))
    write_table(results, tmp_path)
    plot(results, tmp_path / "results.png")
    assert "| 2d_slicewise | 10 | 0.9800 | 0.9000 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 4


def test_benchmark_sizes_read_as_x_by_y_by_z() -> None:
    from xray_seg.cli.study_verbs import parse_size

    assert parse_size("256") == (256, 256, 256)
    assert parse_size("1024x1024x512") == (512, 1024, 1024)
    with pytest.raises(Exception, match="size must be"):
        parse_size("12x5")


@pytest.mark.parametrize("depth", [1, 8, 13])
def test_labels_of_is_torch_argmax_as_uint8(depth: int) -> None:
    scores = torch.from_numpy(np.random.default_rng(depth).integers(0, 3, (3, depth, 7, 5)).astype(np.float32))
    labels = labels_of(scores)  # ties everywhere: both take the first maximal class
    assert labels.dtype == np.uint8 and labels.shape == (depth, 7, 5)
    assert np.array_equal(labels, scores.argmax(0).numpy())
    assert np.array_equal(labels_of(scores.to(torch.bfloat16)), scores.argmax(0).numpy())
