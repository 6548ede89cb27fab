"""End to end through ``python -m monai.bundle run``: train, resume, evaluate, infer, bad input.

Runs the real CLI in subprocesses on a tiny generated dataset (64 px network
input, a couple of epochs), so it checks the wiring, not the accuracy.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xray_seg.shared.atomic import write_text
from xray_seg.shared.bundles import bundle_command
from xray_seg.chest.manifest import build_manifest
from xray_seg.shared.resume import latest_checkpoint
from xray_seg.synthetic.cxr import generate_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle" / "cxr_lungs"
SMALL = {"image_size": 64, "roi_size": [64, 64], "batch_size": 4, "num_workers": 0}


def bundle_run(config_files: list[str], **overrides: object) -> subprocess.CompletedProcess:
    return subprocess.run(bundle_command(config_files, **overrides), capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A generated dataset with its manifest, and one trained (2-epoch) model."""
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    generate_dataset(data, n_cases=12, size=96, seed=1)
    manifest = root / "manifest.json"
    write_text(manifest, json.dumps(build_manifest(data, seed=0, val_fraction=0.2, test_fraction=0.2)))
    run = root / "run"
    paths = {"root": root, "data": data, "manifest": manifest, "run": run, "models": run, "logs": run / "logs"}
    ok(bundle_run(["train.yaml"], **train_overrides(paths), num_epochs=2, val_interval=1))
    return paths


def train_overrides(paths: dict[str, Path]) -> dict[str, object]:
    return dict(
        dataset_dir=paths["data"], datalist=paths["manifest"], run_dir=paths["run"], **SMALL
    )


def test_training_writes_best_model_resume_state_and_tensorboard_logs(workspace: dict[str, Path]) -> None:
    assert (workspace["models"] / "model.pt").is_file()
    assert (workspace["models"] / "resume_checkpoint_epoch=2.pt").is_file()
    assert list(workspace["logs"].glob("events.out.tfevents.*"))


def test_training_records_its_settings_in_the_run_folder(workspace: dict[str, Path]) -> None:
    settings = json.loads((workspace["run"] / "run.json").read_text())["settings"]
    assert settings["num_epochs"] == 2 and settings["datalist"] == str(workspace["manifest"].resolve())
    assert len(settings["datalist_sha256"]) == 16 and settings["network"]


def test_resume_with_other_settings_is_refused(workspace: dict[str, Path]) -> None:
    before = sorted(p.name for p in workspace["run"].iterdir())
    result = bundle_run(["train.yaml"], **train_overrides(workspace), num_epochs=3, val_interval=1)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "num_epochs: was 2, now 3" in result.stderr and str(workspace["run"]) in result.stderr
    assert sorted(p.name for p in workspace["run"].iterdir()) == before


# The resumed run restarts its augmentation random streams (the seed is set at start-up),
# so its last validation differs from an uninterrupted run's by chance, not by design.
RESUME_DICE_TOLERANCE = 0.1


def val_scores(log: str) -> dict[int, float]:
    return {int(e): float(d) for e, d in re.findall(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)", log)}


def test_killed_run_resumes_where_it_stopped(workspace: dict[str, Path], tmp_path: Path) -> None:
    """SIGKILL mid-run, then the same command: the run continues from its last epoch, keeps the
    best model from before the kill, and ends near an uninterrupted run of the same seed."""
    run = tmp_path / "run"
    overrides = {**train_overrides(workspace), "run_dir": run, "num_epochs": 4, "val_interval": 1}
    with open(tmp_path / "killed.log", "w") as killed_log:
        proc = subprocess.Popen(bundle_command(["train.yaml"], **overrides), stdout=killed_log,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not list(run.glob("resume_checkpoint_epoch=*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()
    killed_at = int(latest_checkpoint(str(run)).rsplit("=", 1)[1][:-3])
    assert killed_at < 4, "the run finished before it could be killed"
    result = ok(bundle_run(["train.yaml"], **overrides))
    log = result.stdout + result.stderr
    assert "Restored all variables" in log
    trained = [int(n) for n in re.findall(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete", log)]
    assert trained == list(range(killed_at + 1, 5))  # only the epochs after the kill
    # The resumed run's saver does not know the file it started from; the pruner does.
    assert [p.name for p in run.glob("resume_*")] == ["resume_checkpoint_epoch=4.pt"]
    # The best model is the best of all epochs, before and after the kill.
    scores = {**{e: d for e, d in val_scores((tmp_path / "killed.log").read_text()).items() if e <= killed_at},
              **val_scores(log)}
    assert sorted(scores) == [1, 2, 3, 4]
    best = torch.load(run / "resume_checkpoint_epoch=4.pt", weights_only=True)["best_model"]["_saved"]
    assert best[0][0] == pytest.approx(max(scores.values()), abs=1e-4)
    uninterrupted = ok(bundle_run(["train.yaml"], **{**overrides, "run_dir": tmp_path / "full"}))
    full = val_scores(uninterrupted.stdout + uninterrupted.stderr)
    print(f"killed after epoch {killed_at}; validation Dice per epoch {scores}; uninterrupted {full}")
    assert abs(full[4] - scores[4]) <= RESUME_DICE_TOLERANCE


def test_evaluation_writes_metrics_collage_and_curves(workspace: dict[str, Path]) -> None:
    out = workspace["run"] / "eval"  # the default: the eval folder of the model's run
    ok(bundle_run(["train.yaml", "evaluate.yaml"], **train_overrides(workspace),
                  ckpt_path=workspace["run"] / "model.pt"))
    metrics = json.loads((out / "metrics.json").read_text())
    test_cases = json.loads(workspace["manifest"].read_text())["testing"]
    assert metrics["num_cases"] == len(test_cases)
    lung = metrics["classes"]["lung"]
    assert set(lung) >= {"dice", "iou", "accuracy", "precision", "recall", "f1", "hd95"}
    assert 0.0 <= metrics["mean_dice"] <= 1.0 and lung["dice"] == pytest.approx(metrics["mean_dice"])
    counts = np.array(metrics["pixel_confusion_matrix"]["counts"])
    assert counts.shape == (2, 2) and counts.sum() == len(test_cases) * 96 * 96  # scored at full size
    with open(out / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test_cases) and "dice_lung" in rows[0] and "hd95_lung" in rows[0]
    # The quality row of each case beside its scores (evaluate.yaml: extra_key qc).
    assert all(r["qc_flag"] in ("true", "false") and 0 < float(r["qc_score"]) <= 1 for r in rows)
    # The outline's signed offset per region (evaluate.yaml: case_measures), in each row and averaged.
    assert all(f"offset_{region}_px" in rows[0] for region in ("medial", "lateral", "apex", "base"))
    assert set(metrics["case_measures"]) == {"offset_medial_px", "offset_lateral_px", "offset_apex_px", "offset_base_px"}
    for picture in ("collage.png", "training_curves.png"):
        assert Image.open(out / picture).size[0] > 200


def test_inference_contract(workspace: dict[str, Path], tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = np.array(Image.open(next((workspace["data"] / "images").glob("*.png"))))
    Image.fromarray(source[:, 10:80]).save(inputs / "narrow.png")  # 96 rows x 70 columns
    Image.fromarray(np.stack([source] * 3, axis=-1)).save(inputs / "colour.jpg")
    out = tmp_path / "out"
    ok(
        bundle_run(
            ["inference.yaml"], dataset_dir=inputs, output_dir=out, ckpt_path=workspace["models"] / "model.pt",
            save_overlay=True, **SMALL,
        )  # fmt: skip
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "colour_overlay.png", "colour_seg.png", "narrow_overlay.png", "narrow_seg.png", "qc.csv",
    ]  # fmt: skip
    for stem, shape in (("narrow", (96, 70)), ("colour", (96, 96))):
        mask = np.array(Image.open(out / f"{stem}_seg.png"))
        assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert np.array(Image.open(out / f"{stem}_overlay.png")).shape == (*shape, 3)


@pytest.mark.parametrize("problem", ["missing folder", "empty folder", "corrupt image"])
def test_inference_bad_input_is_one_clear_error_and_writes_nothing(
    workspace: dict[str, Path], tmp_path: Path, problem: str
) -> None:
    inputs = tmp_path / "in"
    if problem != "missing folder":
        inputs.mkdir()
    if problem == "corrupt image":
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(inputs / "good.png")
        (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    result = bundle_run(
        ["inference.yaml"], dataset_dir=inputs, output_dir=out, ckpt_path=workspace["models"] / "model.pt", **SMALL
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("ERROR: ") :]  # may list several files, one per line
    assert str(inputs / "broken.png") in error if problem == "corrupt image" else str(inputs) in error
    assert "good.png" not in error
    assert not out.exists()


def test_training_with_wrong_dataset_dir_is_one_clear_error(workspace: dict[str, Path], tmp_path: Path) -> None:
    wrong = tmp_path / "nowhere"
    result = bundle_run(["train.yaml"], **{**train_overrides(workspace), "dataset_dir": wrong, "run_dir": tmp_path})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(wrong) in result.stderr and "--dataset_dir" in result.stderr


@pytest.mark.real_data
def test_shipped_model_segments_real_radiographs(data_dir: Path, tmp_path: Path) -> None:
    """The committed model on three Montgomery test-split images, at full resolution."""
    model = BUNDLE / "models" / "model.pt"
    if not model.is_file():
        pytest.skip(f"no shipped model at {model}")
    montgomery = data_dir / "montgomery"
    cases = json.loads((REPO / "data_manifests" / "montgomery.json").read_text())["testing"][:3]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in cases:
        (inputs / Path(case["image"]).name).symlink_to(montgomery / case["image"])
    out = tmp_path / "out"
    ok(bundle_run(["inference.yaml"], dataset_dir=inputs, output_dir=out))
    for case in cases:
        truth = np.array(Image.open(montgomery / case["label"])) > 127
        pred = np.array(Image.open(out / f"{Path(case['image']).stem}_seg.png")) == 1
        dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        assert dice > 0.93, f"{case['image']}: Dice {dice:.3f}"
