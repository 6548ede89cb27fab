"""torchrun on the CPU (gloo). Training: 2 processes on one machine, and 2 "nodes" of 1
process each meeting over loopback; the ranks must end with identical weights, rank 0
alone writes the run folder, the best model loads into the inference network, and
validation Dice agrees with a one-process run of the same global batch. Inference: 2
processes share the inputs and publish the same masks as one process. Evaluation: 2
processes, and 2 "nodes", write the same report as one process."""

from __future__ import annotations

import csv
import json
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from bundle_runs import run_bundle_in_process

from xray_seg.chest.manifest import build_manifest
from xray_seg.shared.atomic import write_text
from xray_seg.shared.bundles import prepare
from xray_seg.shared.paths import BUNDLES
from xray_seg.synthetic.cxr import generate_dataset

pytestmark = pytest.mark.slow

BUNDLE = BUNDLES / "cxr_lungs"
CONFIGS = BUNDLE / "configs"
SMALL = {"image_size": 64, "roi_size": [64, 64], "num_workers": 0, "num_epochs": 8, "val_interval": 1,
         "learning_rate": 0.003}
# Per-rank batch norm statistics (2 images per rank instead of 4) and per-rank
# augmentation streams make the two runs differ; 8 epochs on 7 tiny training images
# leave both far from converged, so the agreement asked of them is coarse.
DICE_TOLERANCE = 0.1
# A test-only mix-in: every rank saves its own weights at the end.
SAVE_RANK_WEIGHTS = """
finalize:
  - "$torch.save(@network.module.state_dict(), @run_dir + '/rank' + str(@rank) + '.pt')"
  - "$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()"
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    generate_dataset(root / "data", n_cases=12, size=96, seed=1)
    write_text(root / "manifest.json", json.dumps(build_manifest(root / "data", seed=0, val_fraction=0.2,
                                                                 test_fraction=0.2)))
    (root / "save_ranks.yaml").write_text(SAVE_RANK_WEIGHTS)
    return {"root": root, "data": root / "data", "manifest": root / "manifest.json", "mixin": root / "save_ranks.yaml"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundle_args(configs: list[str], run_dir: Path, data: dict[str, Path], batch_size: int,
                **overrides: object) -> list[str]:
    args = ["-m", "monai.bundle", "run", "--bundle_root", str(BUNDLE), "--config_file", repr(configs),
            "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
            "--dataset_dir", str(data["data"]), "--datalist", str(data["manifest"]), "--run_dir", str(run_dir),
            "--batch_size", str(batch_size)]
    for key, value in {**SMALL, **overrides}.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return args


def distributed_configs(data: dict[str, Path]) -> list[str]:
    return [str(CONFIGS / "train.yaml"), str(CONFIGS / "multi_gpu_train.yaml"), str(data["mixin"])]


def last_val_dice(log: str) -> float:
    return float(re.findall(r"Metrics -- val_mean_dice: ([0-9.]+)", log)[-1])


def check(result: subprocess.CompletedProcess) -> str:
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def check_ranks(run_dir: Path, epochs: int) -> None:
    weights = [torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # gradients were averaged
    # Rank 0 alone wrote the run folder: one resume file, one run.json, one best model.
    assert sorted(p.name for p in run_dir.glob("resume_*")) == [f"resume_checkpoint_epoch={epochs}.pt"]
    infer = ConfigParser()
    infer.read_config(str(CONFIGS / "inference.yaml"))
    infer["device"] = "$torch.device('cpu')"
    infer.get_parsed_content("network_def").load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))


def test_two_processes_train_like_one_with_the_same_global_batch(data: dict[str, Path], tmp_path: Path) -> None:
    # Through `xray-seg train --nproc 2`, which wraps torchrun and adds multi_gpu_train.yaml.
    # Without augmentation: each rank draws its own (seed + rank), so with it the two
    # runs would differ by more than how the batch is split across processes.
    settings = bundle_args([], tmp_path / "ddp", data, batch_size=2, augmentation="[]")
    settings = settings[settings.index("--dataset_dir"):]
    ddp = check(subprocess.run(
        [sys.executable, "-m", "xray_seg.cli", "train", "--bundle", "cxr_lungs", "--nproc", "2",
         "--config", str(data["mixin"]), *settings], capture_output=True, text=True, timeout=600))
    check_ranks(tmp_path / "ddp", SMALL["num_epochs"])
    single = check(subprocess.run(
        [sys.executable, *bundle_args([str(CONFIGS / "train.yaml")], tmp_path / "one", data, batch_size=4,
                                      augmentation="[]")],
        capture_output=True, text=True, timeout=600))
    assert abs(last_val_dice(ddp) - last_val_dice(single)) <= DICE_TOLERANCE, (last_val_dice(ddp),
                                                                               last_val_dice(single))


def test_two_nodes_meet_over_loopback(data: dict[str, Path], tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "xray",
             *bundle_args(distributed_configs(data), tmp_path / "run", data, batch_size=2, num_epochs=2)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    check_ranks(tmp_path / "run", 2)


@pytest.mark.parametrize("bundle", ["cxr_lungs", "cxr_anatomy"])
def test_sharded_inference_writes_the_same_masks_as_one_process(bundle: str, data: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """`xray-seg infer --nproc 2`: each rank segments every second image, rank 0 publishes
    the whole set; the files and their pixels equal a one-process run's, except the
    last digits of qc.csv's scores (below)."""
    outputs, quality = {}, {}
    for nproc in ("1", "2"):
        out = tmp_path / f"out{nproc}"
        result = subprocess.run(
            [sys.executable, "-m", "xray_seg.cli", "infer", "--bundle", bundle, "--nproc", nproc,
             "--dataset_dir", str(data["data"] / "images"), "--output_dir", str(out)],
            capture_output=True, text=True, timeout=600)
        check(result)
        with open(out / "qc.csv", newline="") as f:
            quality[nproc] = list(csv.DictReader(f))
        outputs[nproc] = {p.name: np.array(Image.open(p)) if p.suffix == ".png" else p.read_text()
                          for p in sorted(out.iterdir()) if p.name != "qc.csv"}  # masks; cxr_anatomy: measurements
    assert len(outputs["1"]) >= 12 and list(outputs["1"]) == list(outputs["2"])
    assert all(np.array_equal(outputs["1"][name], outputs["2"][name]) for name in outputs["1"])
    assert not any(name.startswith(".") for name in outputs["2"])  # nothing staged is left
    # One row per input, the same flags and reasons. The scores may differ in the 6th
    # decimal: each of the 2 processes runs the network with 1 torch thread instead of 2,
    # so the logits' float sums round differently (measured: 0.837823 against 0.837824).
    one, two = quality["1"], quality["2"]
    assert len(one) == 12 and [(r["stem"], r["qc_flag"], r["reasons"]) for r in one] == \
        [(r["stem"], r["qc_flag"], r["reasons"]) for r in two]
    assert all(abs(float(a["qc_score"]) - float(b["qc_score"])) <= 1e-5 for a, b in zip(one, two))


# ---------------------------------------------------------------- evaluation

# The shipped lungs model on the 8 synthetic training images at 128 px: quick, and the
# scores vary from case to case (some 0, some undefined, some high), so that a case
# scored under another's name or counted twice would show.
EVALUATION = {"split": "training", "image_size": 128, "roi_size": [128, 128], "num_workers": 0}


def evaluate_command(data: dict[str, Path], out: Path, *launch: str) -> list[str]:
    settings = [arg for key, value in EVALUATION.items() for arg in (f"--{key}", str(value).replace(" ", ""))]
    return [sys.executable, "-m", "xray_seg.cli", "evaluate", "--bundle", "cxr_lungs", *launch, *settings,
            "--dataset_dir", str(data["data"]), "--datalist", str(data["manifest"]), "--output_dir", str(out)]


def report(folder: Path) -> tuple[dict, list[dict]]:
    with open(folder / "metrics_per_case.csv", newline="") as f:
        return json.loads((folder / "metrics.json").read_text()), list(csv.DictReader(f))


def assert_close(a: object, b: object, where: str = "") -> None:
    """Equal structure and strings; numbers equal within float tolerance (NaN equals NaN)."""
    if isinstance(a, (dict, list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (where, a, b)
        keys = list(a) if isinstance(a, dict) else range(len(a))
        assert not isinstance(a, dict) or list(a) == list(b), (where, list(a), list(b))
        for key in keys:
            assert_close(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, str) and isinstance(b, str) and a != b:  # CSV cells: numbers as text
        assert_close(float(a), float(b), where)
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isnan(a) and math.isnan(b) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def one_process_report(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    out = tmp_path_factory.mktemp("eval") / "one"
    run_bundle_in_process(BUNDLE, ["train.yaml", "evaluate.yaml"], dataset_dir=data["data"], datalist=data["manifest"],
                          output_dir=out, device="$torch.device('cpu')", **EVALUATION)
    metrics, rows = report(out)
    cases = [row["case"] for row in rows]
    assert metrics["num_cases"] == len(cases) == 8 and cases == sorted(cases)
    dice = {float(row["dice_lung"]) for row in rows}
    assert len(dice) >= 4 and max(dice) > 0.5  # cases that differ, so that a mix-up would show
    return metrics, rows


def test_two_processes_evaluate_like_one(data: dict[str, Path], one_process_report: tuple[dict, list[dict]],
                                         tmp_path: Path) -> None:
    """`xray-seg evaluate --nproc 2` (multi_gpu_evaluate.yaml): each rank scores every second
    case, rank 0 gathers them; metrics.json and the per-case CSV equal a one-process run's."""
    log = check(subprocess.run(evaluate_command(data, tmp_path / "two", "--nproc", "2"),
                               capture_output=True, text=True, timeout=600))
    assert "multi_gpu_evaluate.yaml" in log
    assert_close(report(tmp_path / "two"), one_process_report)
    assert (tmp_path / "two" / "collage.png").stat().st_size > 0


def test_two_nodes_evaluate_over_loopback_like_one_process(data: dict[str, Path],
                                                           one_process_report: tuple[dict, list[dict]],
                                                           tmp_path: Path) -> None:
    """Two torchrun launches (--nnodes 2, one process each) meeting on 127.0.0.1, with the
    command that `xray-seg evaluate --nnodes 2` runs (its flags: tests/cli/test_cli_settings.py)."""
    endpoint = f"127.0.0.1:{free_port()}"
    job = prepare("evaluate", "cxr_lungs", [], {**EVALUATION, "dataset_dir": str(data["data"]),
                                                "datalist": str(data["manifest"]), "output_dir": str(tmp_path / "nodes")},
                  after=["multi_gpu_evaluate.yaml"])
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "xray-eval",
             *job.command()[1:]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert_close(report(tmp_path / "nodes"), one_process_report)
