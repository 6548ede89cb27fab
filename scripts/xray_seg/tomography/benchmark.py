"""Benchmark of streaming sliding-window inference of the xray_tomography bundle.

    python -m xray_seg.tomography.benchmark [--sizes 256 512 1024x1024x512]
        [--workdir runs/benchmark_tomo] [--slab_depth 64] [--halo 16]

For each size, makes a synthetic tomography volume (xray_seg.synthetic.tomo:
phantom, projections, Poisson noise, filtered back-projection) as a multi-page
uint16 TIFF, kept in the work folder for the next run, then segments it with the
bundle's inference network, inferer and streaming settings (from inference.yaml,
with the shipped weights) in a child process of its own, and reports voxels/s,
wall time and the child's peak resident memory. The network runs on the GPU when
there is one; the volume and output stay in CPU memory either way. Writes
``benchmark.json`` in the work folder and prints it.
"""

from __future__ import annotations

import argparse
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


def parse_size(text: str) -> tuple[int, int, int]:
    """'512' -> (512, 512, 512); '1024x1024x512' -> (z, y, x) = (512, 1024, 1024): x by y by z, as sizes are said."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or XxYxZ, got {text!r}")
    x, y, z = parts
    return z, y, x


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

    from xray_seg.tomography.inference import segment_volume
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
    start = time.time()
    segment_volume(image, out, network, inferer, slab_depth=parser["slab_depth"], halo=parser["halo"])
    wall = time.time() - start
    with SlabReader(image) as reader:
        shape = reader.shape
    voxels = shape[0] * shape[1] * shape[2]
    return {
        "shape_zyx": list(map(int, shape)),
        "voxels": voxels,
        "wall_s": round(wall, 1),
        "voxels_per_s": round(voxels / wall),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "weights": str(ckpt) if ckpt.is_file() else "untrained (no checkpoint)",
        "device": str(parser.get_parsed_content("device")),
        "settings": {k: parser[k] for k in ("patch_size", "slab_depth", "halo", "sw_batch_size", "overlap")},
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xray_seg.tomography.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size(s) for s in ("256", "512", "1024x1024x512")])
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark_tomo"))
    parser.add_argument("--slab_depth", type=int, default=64)
    parser.add_argument("--halo", type=int, default=16)
    parser.add_argument("--max_angles", type=int, default=128, help="cap on the simulated scan's projection angles")
    parser.add_argument("--generate_only", action="store_true", help="make the volumes, measure nothing")
    parser.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    overrides = {"slab_depth": args.slab_depth, "halo": args.halo}

    if args.child:
        print(json.dumps(segment(Path(args.child[0]), Path(args.child[1]), overrides)))
        return 0

    report = {
        "bundle": "xray_tomography",
        "command": "python -m xray_seg.tomography.benchmark " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),  # other work sharing the CPU skews the figures
        },
        "runs": [],
    }
    if args.generate_only:
        for size in args.sizes:
            print(volume_for(size, args.workdir, args.max_angles), flush=True)
        return 0
    for size in args.sizes:
        image, generation = volume_for(size, args.workdir, args.max_angles)
        out = args.workdir / "outputs" / f"{image.parent.name}_seg.tif"
        print(f"-- {image.parent.name} (z x y x x): segmenting ...", flush=True)
        cmd = [sys.executable, "-m", "xray_seg.tomography.benchmark", "--slab_depth", str(args.slab_depth),
               "--halo", str(args.halo), "--child", str(image), str(out)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"ERROR: segmenting {image} failed (exit {proc.returncode})")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["synthetic_volume"] = generation
        out.unlink(missing_ok=True)  # the label volume is not needed; disk is
        print(f"   {json.dumps(run)}", flush=True)
        report["runs"].append(run)
        write_text(args.workdir / "benchmark.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.workdir / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
