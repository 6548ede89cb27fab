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
