"""``xray-seg benchmark``: the wiring from the verb to xray_seg.studies, on a tiny volume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_tomography_benchmark_writes_its_report(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "xray_seg.cli", "benchmark", "tomo", "--sizes", "64x64x32",
                             "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    (row,) = report["runs"]
    assert row["shape_zyx"] == [32, 64, 64] and row["voxels"] == 32 * 64 * 64  # WxHxD: 32 slices of 64x64
    assert row["voxels_per_s"] > 0 and row["peak_rss_gib"] > 0


def test_throughput_benchmark_puts_network_and_pipeline_side_by_side(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "xray_seg.cli", "benchmark", "throughput", "--n_images", "2",
                             "--volume", "48x48x16", "--output_file", str(tmp_path / "t.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "t.json").read_text())
    for path, unit in (("2d", "images_per_s"), ("3d", "voxels_per_s")):
        network, pipeline = report[path]["network_only"][unit], report[path]["end_to_end"][unit]
        assert network > 0 and pipeline > 0 and report[path]["ratio"] == round(pipeline / network, 3)
    assert report["3d"]["end_to_end"]["shape_zyx"] == [16, 48, 48]
    assert "| 2D cxr_lungs" in result.stdout and report["machine"]["load_average_before"] is not None


def test_gpu_check_runs_its_code_path_on_the_cpu(tmp_path: Path) -> None:
    """`xray-seg benchmark gpu --device cpu`: every measurement of a GPU run, at small sizes."""
    result = subprocess.run([sys.executable, "-m", "xray_seg.cli", "benchmark", "gpu", "--device", "cpu",
                             "--output_file", str(tmp_path / "gpu.json")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    inference = report["inference"]["fp32"]  # no AMP on the CPU
    assert list(report["inference"]) == ["fp32"] and inference["2d"]["end_to_end"]["images"] == 4
    assert inference["3d"]["end_to_end"]["shape_zyx"] == [32, 64, 64]
    shapes = {"cxr_lungs": [2, 1, 64, 64], "cxr_anatomy": [2, 1, 64, 64], "xray_tomography": [4, 1, 16, 32, 32]}
    for bundle, shape in shapes.items():
        run = report["training"][bundle]["fp32"]
        assert run["batch_shape"] == shape and run["steps"] == 3 and run["steps_per_s"] > 0
    assert report["torchrun"] == {"skipped": "not a GPU run"}
    assert "| cxr_anatomy training" in result.stdout


def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU: the check would run for minutes")
    result = subprocess.run([sys.executable, "-m", "xray_seg.cli", "benchmark", "gpu",
                             "--output_file", str(tmp_path / "gpu.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("ERROR: --device cuda: CUDA is not available")
    assert "--device cpu" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "gpu.json").exists()
