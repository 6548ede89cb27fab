"""Inference throughput side by side: the network alone, and the bundle's own inference end to end.

    xray-seg benchmark throughput [--n_images 200] [--volume 256x256x256] [--device cpu|cuda] [--amp]

One run measures, with the same model, window and threads:
- 2D (cxr_lungs): network-only images/s (shipped UNet on random 256x256 windows, the
  inferer's batch of 4, after a warm-up) and end-to-end images/s of the bundle's
  inference.yaml on synthetic 512x512 PNGs (decode and check, preprocessing, sliding
  window, inverse resize, post-processing, mask writing, publishing); the end-to-end
  time runs from the workflow's initialisation (configs parsed, inputs checked) to
  the published masks, without interpreter start-up and imports.
- 3D (xray_tomography): network-only output voxels/s (MONAI's sliding window with the
  bundle's window, overlap and batch over a volume held in memory) and end-to-end
  voxels/s of the bundle's inference.yaml on the same volume as a TIFF file (checks,
  streaming slab by slab with halos, reading, writing, publishing), timed like 2D.
Their ratio is the share of the pipeline's time that the network accounts for. The
network alone is measured just before and just after each pipeline and the mean is
used (each is in the report): on a shared machine its speed drifts within minutes. The
load average before and after is recorded. On a GPU, pass
``--device cuda`` (and ``--amp`` for mixed precision); peak GPU memory is recorded.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from xray_seg.shared.atomic import write_text
from xray_seg.shared.machine import cpu_name, load_average
from xray_seg.shared.paths import BUNDLES
from xray_seg.tomography.inference import slab_depth_for


def _network(bundle: str, device: torch.device) -> tuple[torch.nn.Module, ConfigParser]:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLES / bundle)
    parser["device"] = f"$torch.device('{device}')"
    net = parser.get_parsed_content("network_def").to(device)
    net.load_state_dict(torch.load(BUNDLES / bundle / "models" / "model.pt", map_location=device, weights_only=True))
    return net.eval(), parser


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work before a clock is read (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_2d(device: torch.device, amp: bool, batches: int = 20, batch: int = 4, size: int = 256) -> dict:
    net, _ = _network("cxr_lungs", device)
    x = torch.rand(batch, 1, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        for _ in range(3):
            net(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            net(x)
        sync(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": round(batches * batch / seconds, 2), "batch": batch, "window": [size, size]}


def pipeline_2d(device: torch.device, amp: bool, n_images: int, root: Path) -> dict:
    from monai.bundle import ConfigWorkflow

    from xray_seg.synthetic.cxr import generate_dataset

    generate_dataset(root / "data", n_cases=n_images, size=512, seed=1)
    configs = BUNDLES / "cxr_lungs" / "configs"
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.yaml"), meta_file=str(configs / "metadata.json"),
        workflow_type="infer", bundle_root=str(BUNDLES / "cxr_lungs"), dataset_dir=str(root / "data" / "images"),
        output_dir=str(root / "out"), device=f"$torch.device('{device}')", amp=amp,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    sync(device)
    seconds = time.perf_counter() - start
    written = len(list((root / "out").glob("*_seg.png")))
    if written != n_images:
        raise RuntimeError(f"the inference wrote {written} of {n_images} masks")
    settings = {k: workflow.parser.get_parsed_content(k, default=None) for k in ("batch_size", "num_workers")}
    return {"images_per_s": round(n_images / seconds, 2), "images": n_images, "input": [512, 512],
            "seconds": round(seconds, 2), **settings}


def network_3d(device: torch.device, amp: bool, shape: tuple[int, int, int]) -> dict:
    net, parser = _network("xray_tomography", device)
    inferer = parser.get_parsed_content("inferer")
    volume = torch.rand(1, 1, *shape)
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        inferer(volume[..., :32, :96, :96], net)  # warm-up
        sync(device)
        start = time.perf_counter()
        inferer(volume, net)
        sync(device)
    seconds = time.perf_counter() - start
    return {"voxels_per_s": round(volume.numel() / seconds), "shape_zyx": list(shape), "seconds": round(seconds, 2)}


def pipeline_3d(device: torch.device, amp: bool, shape: tuple[int, int, int], root: Path) -> dict:
    import tifffile
    from monai.bundle import ConfigWorkflow

    rng = np.random.default_rng(0)
    (root / "volumes").mkdir()
    tifffile.imwrite(root / "volumes" / "volume.tif", rng.integers(16000, 47000, size=shape, dtype=np.uint16))
    configs = BUNDLES / "xray_tomography" / "configs"
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.yaml"), meta_file=str(configs / "metadata.json"),
        workflow_type="infer", bundle_root=str(BUNDLES / "xray_tomography"), dataset_dir=str(root / "volumes"),
        output_dir=str(root / "volumes_out"), device=f"$torch.device('{device}')",
    )  # fmt: skip
    workflow.initialize()
    with torch.autocast(device.type, enabled=amp):
        workflow.run()
    sync(device)
    seconds = time.perf_counter() - start
    if not (root / "volumes_out" / "volume_seg.tif").is_file():
        raise RuntimeError("the 3D inference wrote no label volume")
    settings = {k: workflow.parser.get_parsed_content(k) for k in ("slab_depth", "slab_voxels", "halo")}
    settings["slab_depth"] = slab_depth_for(shape, workflow.parser.get_parsed_content("inferer"), **{
        k: settings[k] for k in ("slab_depth", "slab_voxels")})  # what the bundle chose for this volume
    return {"voxels_per_s": round(int(np.prod(shape)) / seconds), "shape_zyx": list(shape), **settings,
            "seconds": round(seconds, 2)}


def _bracketed(measure_before, key: str):
    """Measure now; the returned function measures again and gives both with their mean under ``key``."""
    before = measure_before()

    def after(measure_after) -> dict:
        again = measure_after()
        return {**before, key: round((before[key] + again[key]) / 2, 2), f"{key}_before": before[key],
                f"{key}_after": again[key]}

    return after


def measure(device: str = "cpu", amp: bool = False, n_images: int = 200,
            volume: tuple[int, int, int] = (256, 256, 256)) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    report = {"machine": {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "device": str(dev),
                          "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "amp": amp,
                          "load_average_before": load_average()}}
    with tempfile.TemporaryDirectory() as tmp:
        # The network alone is measured just before and just after the pipeline, and the two
        # averaged: on a shared machine its speed drifts by 20 % and more within minutes.
        net2d = _bracketed(lambda: network_2d(dev, amp), "images_per_s")
        pipe2d = pipeline_2d(dev, amp, n_images, Path(tmp))
        net2d = net2d(lambda: network_2d(dev, amp))
        net3d = _bracketed(lambda: network_3d(dev, amp, volume), "voxels_per_s")
        pipe3d = pipeline_3d(dev, amp, volume, Path(tmp))
        net3d = net3d(lambda: network_3d(dev, amp, volume))
    report["2d"] = {"network_only": net2d, "end_to_end": pipe2d,
                    "ratio": round(pipe2d["images_per_s"] / net2d["images_per_s"], 3)}
    report["3d"] = {"network_only": net3d, "end_to_end": pipe3d,
                    "ratio": round(pipe3d["voxels_per_s"] / net3d["voxels_per_s"], 3)}
    report["machine"]["load_average_after"] = load_average()
    if dev.type == "cuda":
        report["machine"]["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return report


def table(report: dict) -> str:
    rows = ["| path | network only | end to end | ratio |", "|---|---|---|---|"]
    two, three = report["2d"], report["3d"]
    rows.append(f"| 2D cxr_lungs, 512x512 PNG | {two['network_only']['images_per_s']} images/s | "
                f"{two['end_to_end']['images_per_s']} images/s | {two['ratio']} |")
    shape = "x".join(map(str, three["end_to_end"]["shape_zyx"]))
    rows.append(f"| 3D xray_tomography, {shape} (z, y, x) | {three['network_only']['voxels_per_s'] / 1e6:.2f} M voxels/s | "
                f"{three['end_to_end']['voxels_per_s'] / 1e6:.2f} M voxels/s | {three['ratio']} |")
    return "\n".join(rows)


def benchmark(output_file: Path, device: str, amp: bool, n_images: int, volume: tuple[int, int, int],
              command: str) -> dict:
    report = {"command": command, **measure(device, amp, n_images, volume)}
    write_text(output_file, json.dumps(report, indent=2) + "\n")
    return report
