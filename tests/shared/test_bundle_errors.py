"""The bundles' own configs refuse a bad request with one ERROR line, when run with MONAI's
command (``monai.bundle run``) rather than ``xray-seg``: no input folder, a CUDA device on a
machine without one, a checkpoint that does not exist. Run in process: the same code as
``python -m monai.bundle run``, without an interpreter start per case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import run
from PIL import Image

from xray_seg.shared.paths import BUNDLES

BUNDLE_NAMES = ("cxr_lungs", "cxr_anatomy", "xray_tomography")


def bundle_run(bundle: str, config: str, capsys: pytest.CaptureFixture[str], **overrides: object) -> str:
    folder = BUNDLES / bundle
    with pytest.raises(SystemExit) as exit_info:
        run(config_file=str(folder / "configs" / config), meta_file=str(folder / "configs" / "metadata.json"),
            bundle_root=str(folder), **overrides)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_inference_without_an_input_folder(bundle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = bundle_run(bundle, "inference.yaml", capsys, output_dir=str(tmp_path / "out"))
    assert "no input folder: pass --dataset_dir IN" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_cuda_without_cuda(bundle: str, config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "in").mkdir()
    error = bundle_run(bundle, config, capsys, device="cuda", dataset_dir=str(tmp_path / "in"),
                       output_dir=str(tmp_path / "out"), run_dir=str(tmp_path / "run"))
    assert error.startswith("ERROR: --device cuda: CUDA is not available on this machine")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_missing_checkpoint(bundle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    if bundle == "xray_tomography":
        tifffile.imwrite(inputs / "vol.tif", np.zeros((8, 32, 32), np.uint16))
    else:
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(inputs / "a.png")
    error = bundle_run(bundle, "inference.yaml", capsys, dataset_dir=str(inputs), output_dir=str(tmp_path / "out"),
                       ckpt_path=str(tmp_path / "nope.pt"))
    assert f"{tmp_path / 'nope.pt'}: checkpoint not found" in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
