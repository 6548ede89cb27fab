"""Benchmark of streaming sliding-window inference of the xray_tomography bundle.

    xray-seg benchmark tomo [--sizes 256 512 1024x1024x512]
        [--output_dir runs/benchmark_tomo] [--slab_depth N] [--halo 16]

For each size, makes a synthetic tomography volume (xray_seg.synthetic.tomo:
phantom, projections, Poisson noise, filtered back-projection) as a multi-page
uint16 TIFF, kept in the output folder for the next run, then segments it with the
bundle's inference network, inferer and streaming settings (from inference.yaml,
with the shipped weights) in a child process of its own, and reports voxels/s,
wall time and the child's peak resident memory. The network runs on the GPU when
there is one; the volume and output stay in CPU memory either way. Writes
``benchmark.json`` in the output folder and prints it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from xray_seg.shared.atomic import write_text
from xray_seg.shared.machine import cpu_name
from xray_seg.shared.paths import REPO

CONFIGS = REPO / "bundle" / "xray_tomography" / "configs"


def volume_for(size: tuple[int, int, int], workdir: Path, max_angles: int) -> tuple[Path, dict]:
    """The synthetic volume of ``size``, generated once, and how it was made.

    Projection angles are capped at ``max_angles``: the scan simulation costs time in
    proportion to them, inference speed does not depend on them, and fewer angles
    only add streaks. feature_size 30 gives phases as coarse as soc_ptycho's.
    """
    from xray_seg.synthetic.tomo import default_n_angles, generate_volume

    folder = workdir / "volumes" / "x".join(map(str, size))
    image, record = folder / "image.tif", folder / "generation.json"
    if image.exists() and record.exists():
        return image, json.loads(record.read_text())
    settings = {"seed": 0, "feature_size": 30.0, "n_angles": min(default_n_angles(size[2]), max_angles)}
    start = time.time()
    paths = generate_volume(folder, shape=size, fmt="tiff", **settings)
    settings["generation_s"] = round(time.time() - start, 1)
    write_text(record, json.dumps(settings) + "\n")
    return Path(paths["image"]), settings


def segment(image: Path, out: Path, overrides: dict) -> dict:
    """Child process: segment ``image`` with the bundle's inference settings; timings and peak RSS."""
    from monai.bundle import ConfigParser

    from xray_seg.tomography.inference import segment_volume, slab_depth_for
    from xray_seg.tomography.volume_io import SlabReader

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser["bundle_root"] = str(CONFIGS.parent)
    parser.update(overrides)
    network = parser.get_parsed_content("network")
    ckpt = Path(parser.get_parsed_content("ckpt_path"))
    if ckpt.is_file():
        network.load_state_dict(torch.load(ckpt, map_location=parser.get_parsed_content("device"), weights_only=True))
    inferer = parser.get_parsed_content("inferer")
    with SlabReader(image) as reader:
        shape = reader.shape
    slab_depth = slab_depth_for(shape, inferer, parser["slab_depth"], parser["slab_voxels"])
    start = time.time()
    segment_volume(image, out, network, inferer, slab_depth=slab_depth, halo=parser["halo"])
    wall = time.time() - start
    voxels = shape[0] * shape[1] * shape[2]
    return {
        "shape_zyx": list(map(int, shape)),
        "voxels": voxels,
        "wall_s": round(wall, 1),
        "voxels_per_s": round(voxels / wall),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "weights": str(ckpt) if ckpt.is_file() else "untrained (no checkpoint)",
        "device": str(parser.get_parsed_content("device")),
        "settings": {**{k: parser[k] for k in ("patch_size", "halo", "sw_batch_size", "overlap")},
                     "slab_depth": slab_depth},
        "torch_threads": torch.get_num_threads(),
    }


# The child process that segments one volume: the CLI's hidden --child mode.
CHILD = [sys.executable, "-m", "xray_seg.cli", "benchmark", "tomo"]


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),  # other work sharing the CPU skews the figures
    }


def benchmark(sizes: list[tuple[int, int, int]], output_dir: Path, slab_depth: int | None, halo: int, max_angles: int,
              command: str) -> dict:
    """Segment a synthetic volume of each size in a child process; ``benchmark.json`` in ``output_dir``."""
    report = {"bundle": "xray_tomography", "command": command, "machine": machine(), "runs": []}
    for size in sizes:
        image, generation = volume_for(size, output_dir, max_angles)
        out = output_dir / "outputs" / f"{image.parent.name}_seg.tif"
        print(f"-- {image.parent.name} (z x y x x): segmenting ...", flush=True)
        depth = ["--slab_depth", str(slab_depth)] if slab_depth else []  # else the bundle's
        cmd = [*CHILD, *depth, "--halo", str(halo), "--child", str(image), str(out)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"ERROR: segmenting {image} failed (exit {proc.returncode})")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["synthetic_volume"] = generation
        out.unlink(missing_ok=True)  # the label volume is not needed; disk is
        print(f"   {json.dumps(run)}", flush=True)
        report["runs"].append(run)
        write_text(output_dir / "benchmark.json", json.dumps(report, indent=2) + "\n")
    return report
