"""xray_tomography inference on 2 CPU processes (torchrun, gloo; multi_gpu_inference.yaml):
each rank streams whole volumes of its share, rank 0 publishes the set; the files equal
a one-process run's byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_runs import run_bundle_in_process

from xray_seg.shared.paths import BUNDLES
from xray_seg.synthetic.tomo import generate_volume
from xray_seg.tomography.volume_io import read_volume

pytestmark = pytest.mark.slow

BUNDLE = BUNDLES / "xray_tomography"
# Slabs thinner than the volumes, so every volume is streamed in several slabs with halos.
SMALL = {"patch_size": [8, 32, 32], "slab_depth": 4, "halo": 4}


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


def test_sharded_volumes_give_the_same_files_as_one_process(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    # Three volumes of different sizes and formats: rank 0 gets two, rank 1 one.
    for i, (shape, fmt) in enumerate([((12, 32, 32), "slices"), ((10, 40, 32), "tiff"), ((9, 32, 36), "tiff")]):
        made = generate_volume(tmp_path / f"gen{i}", shape=shape, seed=i, fmt=fmt, feature_size=6.0, progress=False)
        shutil.move(made["image"], inputs / (f"vol{i}.tif" if fmt == "tiff" else f"vol{i}"))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    torch.manual_seed(0)  # untrained weights: the test is about who writes what, not accuracy
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "w.pt")

    run_bundle_in_process(BUNDLE, ["inference.yaml"], dataset_dir=inputs, output_dir=tmp_path / "one",
                          ckpt_path=tmp_path / "w.pt", device="$torch.device('cpu')", **SMALL)
    settings = [arg for key, value in SMALL.items() for arg in (f"--{key}", str(value).replace(" ", ""))]
    result = subprocess.run(
        [sys.executable, "-m", "xray_seg.cli", "infer", "--bundle", "xray_tomography", "--nproc", "2",
         "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "two"), "--ckpt_path", str(tmp_path / "w.pt"),
         *settings], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, two = tree(tmp_path / "one"), tree(tmp_path / "two")
    assert [p for p in one if "/" not in p] == ["vol0_seg", "vol1_seg.tif", "vol2_seg.tif"]
    assert one == two  # same names (nothing staged left), same bytes
    labels, _ = read_volume(tmp_path / "two" / "vol1_seg.tif")
    assert labels.shape == (10, 40, 32) and len(set(labels.ravel().tolist())) > 1  # not a constant answer
