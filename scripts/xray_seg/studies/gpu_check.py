"""Every GPU figure the model cards ask for, in one short run (a few minutes on one GPU).

    xray-seg benchmark gpu [--output_file runs/benchmark/gpu.json] [--device cuda]

Measures, with and without AMP (mixed precision), and writes as JSON:
- inference: 2D images/s and 3D voxels/s, the network alone and each bundle's own
  inference.yaml end to end, their ratio and the peak GPU memory
  (``xray_seg.studies.throughput``, the same measurement as on the CPU);
- training: steps/s of each bundle's train.yaml network, DiceCE loss and Adam
  optimizer, on batches of the config's own training shape (batch size, image or
  patch size, label layout), through MONAI's ``SupervisedTrainer``; the data
  pipeline is left out (random tensors already on the device), so this is the
  network's training speed, and the peak GPU memory of each;
- on a machine with two GPUs or more: ``xray-seg train --bundle cxr_lungs --nproc 2``
  (torchrun, NCCL, ``multi_gpu_train.yaml``) against ``--nproc 1`` on the same
  synthetic set and epochs, wall time with start-up.

``--device cpu`` runs the same code at small sizes (no AMP, no torchrun): the test
suite does, so that the script is known to work before a GPU machine is lent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events

from xray_seg.shared.atomic import write_text
from xray_seg.shared.export import BUNDLE_NAMES
from xray_seg.shared.machine import cpu_name, load_average
from xray_seg.shared.paths import BUNDLES
from xray_seg.studies import throughput

# Sizes of a --device cpu run: the code path of a GPU run, in seconds.
SMALL = {"n_images": 4, "volume": (32, 64, 64), "train_steps": 3, "image_size": 64, "patch": [16, 32, 32]}
FULL = {"n_images": 200, "volume": (256, 256, 256), "train_steps": 20}
WARM_UP_STEPS = 3


def _parser(bundle: str, device: torch.device):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.yaml"))
    parser["bundle_root"] = str(BUNDLES / bundle)
    parser["device"] = f"$torch.device('{device}')"
    return parser


def training_batch(bundle: str, parser, device: torch.device, small: bool) -> dict[str, torch.Tensor]:
    """A random batch in the layout the bundle's train.yaml feeds its loss."""
    generator = torch.Generator().manual_seed(0)
    if bundle == "xray_tomography":
        shape = [parser["patches_per_step"], 1, *(SMALL["patch"] if small else parser["patch_size"])]
    else:
        side = SMALL["image_size"] if small else parser["image_size"]
        shape = [2 if small else parser["batch_size"], 1, side, side]
    image = torch.rand(shape, generator=generator)
    classes = parser["num_classes"]
    if bundle == "cxr_anatomy":  # one sigmoid channel per structure
        label = (torch.rand([shape[0], classes, *shape[2:]], generator=generator) > 0.5).float()
    else:  # class indices, one-hot inside DiceCELoss (to_onehot_y)
        label = torch.randint(0, classes, shape, generator=generator).float()
    return {"image": image.to(device), "label": label.to(device)}


def training_steps(bundle: str, device: torch.device, amp: bool, steps: int, small: bool) -> dict:
    """Steps/s of the bundle's network, loss and optimizer under MONAI's SupervisedTrainer."""
    from monai.engines import SupervisedTrainer

    parser = _parser(bundle, device)
    network = parser.get_parsed_content("network")
    batch = training_batch(bundle, parser, device, small)
    trainer = SupervisedTrainer(
        device=device, max_epochs=1, train_data_loader=[batch] * (steps + WARM_UP_STEPS), network=network,
        optimizer=parser.get_parsed_content("optimizer"), loss_function=parser.get_parsed_content("loss"), amp=amp,
    )  # fmt: skip
    stamps: list[float] = []

    def stamp(_) -> None:
        throughput.sync(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    timed = stamps[WARM_UP_STEPS - 1:]  # from the end of the warm-up steps
    report = {"steps_per_s": round((len(timed) - 1) / (timed[-1] - timed[0]), 2), "steps": len(timed) - 1,
              "batch_shape": list(batch["image"].shape), "amp": amp}
    if device.type == "cuda":
        report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return report


def torchrun_training(gpus: int, root: Path) -> dict:
    """``xray-seg train --nproc N`` for N = 1 and ``gpus`` on the same synthetic set: wall times."""
    from xray_seg.chest.manifest import build_manifest
    from xray_seg.synthetic.cxr import generate_dataset

    generate_dataset(root / "data", n_cases=64, size=256, seed=0)
    write_text(root / "manifest.json", json.dumps(build_manifest(root / "data", seed=0, val_fraction=0.1,
                                                                 test_fraction=0.1)))
    report = {}
    for nproc in (1, gpus):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "xray_seg.cli", "train", "--bundle", "cxr_lungs", "--nproc", str(nproc),
             "--dataset_dir", str(root / "data"), "--datalist", str(root / "manifest.json"),
             "--run_dir", str(root / f"run_{nproc}"), "--num_epochs", "4", "--val_interval", "2"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        report[f"nproc_{nproc}"] = {"seconds": round(time.perf_counter() - start, 1), "returncode": result.returncode,
                                    "epochs": 4, "log_tail": (result.stdout + result.stderr)[-1500:]}
    return report


def measure(device: str = "cuda") -> dict:
    dev = torch.device(device)
    small = dev.type != "cuda"
    sizes = SMALL if small else FULL
    amps = (False, True) if dev.type == "cuda" else (False,)  # CPU autocast is bfloat16: not what a GPU user runs
    report: dict = {"machine": {
        "cpu": cpu_name(), "device": str(dev), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "load_average_before": load_average()}, "sizes": dict(sizes)}
    report["inference"] = {}
    for amp in amps:  # each measure() resets and reports the peak GPU memory itself
        report["inference"]["amp" if amp else "fp32"] = throughput.measure(device, amp, sizes["n_images"],
                                                                          tuple(sizes["volume"]))
    report["training"] = {bundle: {("amp" if amp else "fp32"): training_steps(bundle, dev, amp, sizes["train_steps"],
                                                                              small) for amp in amps}
                          for bundle in BUNDLE_NAMES}
    gpus = report["machine"]["gpus"]
    if dev.type != "cuda":
        report["torchrun"] = {"skipped": "not a GPU run"}
    elif gpus < 2:
        report["torchrun"] = {"skipped": f"{gpus} GPU on this machine; the 2-process run needs two"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report["torchrun"] = torchrun_training(2, Path(tmp))
    report["machine"]["load_average_after"] = load_average()
    return report


def _gib(value: float | None) -> str:
    return "n/a (not a GPU run)" if value is None else f"{value} GiB"


def table(report: dict) -> str:
    rows = ["| measurement | precision | network only | end to end | ratio | peak GPU memory |", "|---|---|---|---|---|---|"]
    for precision, run in report["inference"].items():
        memory = _gib(run["machine"].get("peak_gpu_memory_gib"))
        two, three = run["2d"], run["3d"]
        rows.append(f"| 2D cxr_lungs inference | {precision} | {two['network_only']['images_per_s']} images/s | "
                    f"{two['end_to_end']['images_per_s']} images/s | {two['ratio']} | {memory} (2D and 3D) |")
        rows.append(f"| 3D xray_tomography inference | {precision} | "
                    f"{three['network_only']['voxels_per_s'] / 1e6:.2f} M voxels/s | "
                    f"{three['end_to_end']['voxels_per_s'] / 1e6:.2f} M voxels/s | {three['ratio']} | |")
    for bundle, runs in report["training"].items():
        for precision, run in runs.items():
            rows.append(f"| {bundle} training, batch {run['batch_shape']} | {precision} | "
                        f"{run['steps_per_s']} steps/s | | | {_gib(run.get('peak_gpu_memory_gib'))} |")
    torchrun = report["torchrun"]
    if "skipped" in torchrun:
        rows.append(f"\ntorchrun: skipped ({torchrun['skipped']})")
    else:
        rows.append("\n" + ", ".join(f"{k}: {v['seconds']} s (exit {v['returncode']})" for k, v in torchrun.items()))
    return "\n".join(rows)


def benchmark(output_file: Path, device: str, command: str) -> dict:
    report = {"command": command, **measure(device)}
    write_text(output_file, json.dumps(report, indent=2) + "\n")
    return report
