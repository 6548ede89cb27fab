"""Benchmark of the cxr_lungs bundle: speed, memory and the shipped model's accuracy.

    xray-seg benchmark cxr [--output_file runs/benchmark/cxr_lungs.json] [--n_images 24]

Prints and writes JSON with, at 512x512 input:
- training images/s through the bundle's own train config (loading, augmentation,
  forward and backward; the dataset is cached first, as in real training),
- inference images/s through the bundle's inference config (decode, preprocess,
  sliding-window inference, inverse resize, write the PNG masks),
- the peak resident memory of each of those runs,
- the shipped model's test-split Dice from the evaluate config (needs the
  Montgomery data; reported as skipped with the reason otherwise).

Each measurement runs in a child process, so its peak memory is its own.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events

from xray_seg.shared.atomic import write_text
from xray_seg.shared.machine import cpu_name
from xray_seg.shared.paths import DATA, REPO

BUNDLE = REPO / "bundle" / "cxr_lungs"
CONFIGS = BUNDLE / "configs"
DEFAULT_DATA = DATA / "montgomery"


def _workflow(config_files: list[str], **overrides: object):
    from monai.bundle import ConfigWorkflow

    configs = [str(CONFIGS / name) for name in config_files]
    workflow = ConfigWorkflow(
        config_file=configs if len(configs) > 1 else configs[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer" if config_files == ["inference.yaml"] else "train",
        bundle_root=str(BUNDLE),
        **overrides,
    )
    workflow.initialize()
    return workflow


def _synthetic_dataset(root: Path, n_images: int) -> Path:
    from xray_seg.chest.manifest import build_manifest
    from xray_seg.synthetic.cxr import generate_dataset

    generate_dataset(root, n_cases=n_images, size=512, seed=0)
    manifest = root / "manifest.json"
    # Every case in training: the benchmark times the training loop, not validation.
    datalist = build_manifest(root, seed=0, val_fraction=0.05, test_fraction=0.05)
    datalist["training"] += datalist["validation"] + datalist["testing"]
    write_text(manifest, json.dumps(datalist))
    return manifest


def measure_training(n_images: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = _synthetic_dataset(Path(tmp) / "data", n_images)
        workflow = _workflow(
            ["train.yaml"], dataset_dir=str(Path(tmp) / "data"), datalist=str(manifest), run_dir=f"{tmp}/run",
            num_epochs=epochs, val_interval=10_000, resume=False,
        )  # fmt: skip
        trainer = workflow.trainer
        times: list[float] = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: times.append(time.perf_counter()))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: times.append(time.perf_counter()))
        workflow.run()
        # The first epoch warms up allocators and worker processes; report the rest.
        epoch_seconds = [times[i + 1] - times[i] for i in range(2, len(times), 2)]
        samples = len(trainer.data_loader.dataset)
        return {
            "images_per_s": samples * len(epoch_seconds) / sum(epoch_seconds),
            "epochs_timed": len(epoch_seconds),
            "images_per_epoch": samples,
            "batch_size": trainer.data_loader.batch_size,
        }


def measure_inference(n_images: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        from xray_seg.synthetic.cxr import generate_dataset

        generate_dataset(Path(tmp) / "data", n_cases=n_images, size=512, seed=1)
        workflow = _workflow(
            ["inference.yaml"], dataset_dir=f"{tmp}/data/images", output_dir=f"{tmp}/out",
        )  # fmt: skip
        stamps: list[float] = []
        workflow.evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: stamps.append(time.perf_counter()))
        start = time.perf_counter()
        workflow.run()
        seconds = time.perf_counter() - start
        written = len(list(Path(f"{tmp}/out").glob("*_seg.png")))
        assert written == n_images, f"inference wrote {written} of {n_images} masks"
        # Steady state: from the end of the first image (model load, lazy imports) to the last.
        return {
            "images_per_s": (n_images - 1) / (stamps[-1] - stamps[0]),
            "images": n_images,
            "seconds_including_start": seconds,
        }


def measure_test_dice(montgomery: Path) -> dict:
    if not montgomery.is_dir():
        return {"skipped": f"no Montgomery data at {montgomery} (set XRAY_DATA_DIR)"}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        # The bundle's own test split: every site of the multi-site manifest, under the data root.
        workflow = _workflow(["train.yaml", "evaluate.yaml"], dataset_dir=str(montgomery.parent), output_dir=tmp)
        workflow.run()
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
        return {
            "mean_dice": metrics["mean_dice"],
            "lung": metrics["classes"]["lung"],
            "num_cases": metrics["num_cases"],
            "seconds": time.perf_counter() - start,
        }


# The child process that takes one measurement: the CLI's hidden --phase mode.
CHILD = [sys.executable, "-m", "xray_seg.cli", "benchmark", "cxr"]


def measure(phase: str, n_images: int, epochs: int, dataset_dir: Path) -> dict:
    """One measurement (in a process of its own), with that process's peak memory."""
    result = {
        "train": lambda: measure_training(n_images, epochs),
        "infer": lambda: measure_inference(n_images),
        "dice": lambda: measure_test_dice(dataset_dir),
    }[phase]()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _child(phase: str, n_images: int, epochs: int, dataset_dir: Path) -> dict:
    cmd = [*CHILD, "--phase", phase, "--n_images", str(n_images), "--epochs", str(epochs),
           "--dataset_dir", str(dataset_dir)]  # fmt: skip
    print(f"-- {phase} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"ERROR: benchmark phase {phase} failed (exit status {proc.returncode}); its output is above")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"   {json.dumps(result)}", flush=True)
    return result


def benchmark(output_file: Path, n_images: int, epochs: int, dataset_dir: Path, command: str) -> dict:
    """Every measurement, each in a child process; the report is written to ``output_file``."""
    report = {
        "bundle": "cxr_lungs",
        "input_size": [512, 512],
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),  # other work sharing the CPU skews the figures
        },
        "command": command,
        "training": _child("train", n_images, epochs, dataset_dir),
        "inference": _child("infer", n_images, epochs, dataset_dir),
        "test_split": _child("dice", n_images, epochs, dataset_dir),
    }
    write_text(output_file, json.dumps(report, indent=2))
    return report
