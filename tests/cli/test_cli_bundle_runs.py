"""``xray-seg train``, ``evaluate`` and ``infer`` for real, on a tiny generated dataset.

Run as a user would, from their own folder with relative paths (64 px input, 2
epochs, no workers), so it checks the wiring, not the accuracy; and the
``python -m monai.bundle run`` command that ``--dry_run`` prints gives the same
segmentation as ``xray-seg infer``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

SMALL = ["--image_size", "64", "--roi_size", "[64,64]", "--num_workers", "0"]


def xray_seg(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "xray_seg.cli", *args], capture_output=True, text=True, cwd=cwd,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user folder with a synthetic dataset, its manifest and a 2-epoch model in models/."""
    home = tmp_path_factory.mktemp("user")
    xray_seg(home, "synthetic", "cxr", "--output_dir", "data", "--n_cases", "8", "--size", "64", "--seed", "1")
    xray_seg(home, "manifest", "images", "--dataset_dir", "data", "--output_file", "m.json",
             "--val_fraction", "0.25", "--test_fraction", "0.25")  # fmt: skip
    result = xray_seg(home, "train", "--bundle", "cxr_lungs", "--dataset_dir", "data", "--datalist", "m.json",
                      "--ckpt_dir", "models", "--log_dir", "logs", "--num_epochs", "2", "--val_interval", "1",
                      "--batch_size", "4", "--device", "cpu", *SMALL)  # fmt: skip
    assert result.stdout.startswith("$ ") and "-m monai.bundle run" in result.stdout.splitlines()[0]
    assert "Epoch[2] Complete" in result.stdout + result.stderr
    return home


def test_train_writes_into_the_given_folders(trained: Path) -> None:
    assert (trained / "models" / "model.pt").is_file()
    assert list((trained / "logs").glob("events.out.tfevents.*"))


def test_evaluate_scores_the_test_split(trained: Path) -> None:
    xray_seg(trained, "evaluate", "--bundle", "cxr_lungs", "--dataset_dir", "data", "--datalist", "m.json",
             "--ckpt_dir", "models", "--log_dir", "logs", "--output_dir", "eval", *SMALL)  # fmt: skip
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    assert metrics["num_cases"] == 2 and 0.0 <= metrics["mean_dice"] <= 1.0


def test_infer_and_the_printed_monai_command_give_the_same_masks(
    trained: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from xray_seg.cli.main import main

    (trained / "in").mkdir()
    for image in sorted((trained / "data" / "images").glob("*.png"))[:2]:
        (trained / "in" / image.name).symlink_to(image)
    args = ["infer", "--bundle", "cxr_lungs", "--dataset_dir", "in", "--ckpt_path", "models/model.pt", *SMALL]
    xray_seg(trained, *args, "--output_dir", "out")
    monkeypatch.chdir(trained)
    assert main([*args, "--output_dir", "out_monai", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert not (trained / "out_monai").exists()
    monai_cmd = shlex.split(printed.strip().removeprefix("$ "))
    result = subprocess.run(monai_cmd, capture_output=True, text=True, cwd=trained / "in", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.name for p in (trained / "out").iterdir())
    assert files == ["qc.csv", "synth_0000_seg.png", "synth_0001_seg.png"]
    assert files == sorted(p.name for p in (trained / "out_monai").iterdir())
    assert (trained / "out" / "qc.csv").read_text() == (trained / "out_monai" / "qc.csv").read_text()
    masks = files[1:]
    for name in masks:
        assert np.array_equal(np.array(Image.open(trained / "out" / name)), np.array(Image.open(trained / "out_monai" / name)))
