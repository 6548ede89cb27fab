"""``xray-seg manifest``, ``synthetic`` and ``curves``: files written from relative paths, or one ERROR line and nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_runs import cli


def test_image_manifest_from_another_working_directory(tmp_path: Path) -> None:
    """Generate a dataset and its manifest with relative paths, as a user in their own folder would."""
    run = lambda *args: subprocess.run([sys.executable, "-m", "xray_seg.cli", *args], capture_output=True, text=True,
                                       cwd=tmp_path)  # noqa: E731
    result = run("synthetic", "cxr", "--output_dir", "data", "--n_cases", "10", "--size", "32")
    assert result.returncode == 0, result.stderr
    result = run("manifest", "images", "--dataset_dir", "data", "--output_file", "lists/m.json", "--folds", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote lists/m.json: 8 training in 2 folds")
    manifest = json.loads((tmp_path / "lists" / "m.json").read_text())
    assert manifest["name"] == "data" and manifest["numTest"] == 2
    assert all((tmp_path / "data" / item["image"]).is_file() for item in manifest["training"])


@pytest.mark.parametrize("kind", ["images", "volumes"])
def test_manifest_of_a_bad_dataset_is_one_error_and_writes_nothing(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data" / "images").mkdir(parents=True)
    out = tmp_path / "m.json"
    code, stdout, err = cli(["manifest", kind, "--dataset_dir", str(tmp_path / "data"), "--output_file", str(out)],
                            capsys)  # fmt: skip
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert err.startswith("ERROR: ") and err.count("ERROR") == 1 and err.rstrip().endswith("nothing written")
    assert str(tmp_path / "data") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_volume_manifest_of_a_slice_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    for folder, dtype in (("images", np.uint16), ("labels", np.uint8)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for z in range(30):
            array = rng.integers(0, 3, (12, 14)).astype(dtype) * (127 if dtype == np.uint8 else 1000)
            tifffile.imwrite(tmp_path / "data" / folder / f"s_{z:03d}.tif", array)
    out = tmp_path / "m.json"
    code, stdout, _ = cli(["manifest", "volumes", "--dataset_dir", str(tmp_path / "data"), "--output_file", str(out),
                           "--gap", "2"], capsys)  # fmt: skip
    assert code == 0 and stdout.startswith(f"wrote {out}")
    manifest = json.loads(out.read_text())
    assert manifest["tensorImageSize"] == "3D" and manifest["testing"][0]["slices"][1] == 30


def test_curves_of_a_missing_log_folder_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["curves", "--log_dir", str(tmp_path / "none"), "--output_file", str(tmp_path / "c.png")], capsys)
    assert code == 2 and err.startswith("ERROR: ") and str(tmp_path / "none") in err and "Traceback" not in err
    assert not (tmp_path / "c.png").exists()


def test_synthetic_tomo_needs_an_output_folder(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["synthetic", "tomo"], capsys)
    assert code == 2 and err == "ERROR: synthetic tomo needs --output_dir (or --benchmark)\n"


def test_old_vocabulary_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    """One vocabulary: --output_file/--output_dir and --n_images, not --out/--workdir/--images as a count."""
    for args in (["manifest", "images", "--dataset_dir", ".", "--out", "m.json"],
                 ["benchmark", "cxr", "--images", "3"], ["benchmark", "tomo", "--workdir", "w"]):  # fmt: skip
        code, _, err = cli(args, capsys)
        assert code == 2 and err.splitlines()[-1].startswith("ERROR: xray-seg")
