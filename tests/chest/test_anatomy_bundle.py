"""The cxr_anatomy bundle: configs, both networks, and train/evaluate/infer end to end.

The end-to-end run uses a tiny generated dataset in the JSRT/SCR layout (five
structure folders) and a 64 px network input, so it checks the wiring, not the
accuracy; the shipped model is checked on real JSRT cases when the data is here.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out
from PIL import Image
from scipy import ndimage

from bundle_runs import run_bundle

from xray_seg.chest.anatomy import STRUCTURES
from xray_seg.shared.atomic import write_text
from xray_seg.chest.manifest import build_manifest
from xray_seg.synthetic.cxr import synthesize_case

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle" / "cxr_anatomy"
CONFIGS = BUNDLE / "configs"
SMALL = {"image_size": 64, "roi_size": [64, 64], "batch_size": 4, "num_workers": 0}


def write_anatomy_case(root: Path, name: str, rng: np.random.Generator, size: int = 96) -> None:
    """A synthetic radiograph with five overlapping structure masks in SCR layout."""
    image, lungs = synthesize_case(rng, size)
    components, _ = ndimage.label(lungs)
    centres = ndimage.center_of_mass(lungs, components, [1, 2])
    image_left, image_right = sorted([1, 2], key=lambda c: centres[c - 1][1])
    rows, cols = np.mgrid[:size, :size]
    masks = {
        "right_lung": components == image_left,  # the patient's right lung is on the image left
        "left_lung": components == image_right,
        "heart": ((rows - 0.62 * size) / (0.14 * size)) ** 2 + ((cols - 0.55 * size) / (0.16 * size)) ** 2 < 1,
        "right_clavicle": (abs(rows - 0.18 * size - 0.1 * (cols - 0.3 * size)) < 2) & (cols > 0.1 * size) & (cols < 0.45 * size),
        "left_clavicle": (abs(rows - 0.18 * size + 0.1 * (cols - 0.7 * size)) < 2) & (cols > 0.55 * size) & (cols < 0.9 * size),
    }  # fmt: skip
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
    for structure, mask in masks.items():
        (root / "masks" / structure).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / structure / f"{name}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("anatomy") / "data"
    rng = np.random.default_rng(0)
    for i in range(10):
        write_anatomy_case(root, f"case{i:02d}", rng)
    manifest = root.parent / "manifest.json"
    datalist = build_manifest(root, seed=0, val_fraction=0.2, test_fraction=0.2, structures=STRUCTURES)
    write_text(manifest, json.dumps(datalist))
    return root, manifest


def bundle_run(config_files: list[str], expect: int = 0, **overrides: object) -> subprocess.CompletedProcess:
    return run_bundle(BUNDLE, config_files, expect, **overrides)


def test_train_and_infer_workflows_have_the_model_zoo_properties(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    data, manifest = dataset
    common = dict(meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"), bundle_root=str(BUNDLE))
    train = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"), workflow_type="train", dataset_dir=str(data), datalist=str(manifest),
        run_dir=str(tmp_path / "run"), **common,
    )  # fmt: skip
    train.initialize()
    assert not train.check_properties()
    assert len(train.train_dataset_data) == json.loads(manifest.read_text())["numTraining"]
    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), workflow_type="infer", dataset_dir=str(data / "images"),
        output_dir=str(tmp_path / "out"), ckpt_path=str(BUNDLE / "models" / "model.pt"), **common,
    )  # fmt: skip
    infer.initialize()
    assert not infer.check_properties()


@pytest.mark.parametrize("mixins", [[], ["invertednet.yaml"]], ids=["unet", "invertednet"])
def test_both_networks_verify_in_and_out(mixins: list[str]) -> None:
    configs = [str(CONFIGS / "train.yaml"), *(str(CONFIGS / m) for m in mixins)]
    overrides = {"network_def#channels": [8, 4, 2]} if mixins else {}  # a small InvertedNet keeps the CPU test quick
    verify_net_in_out(
        net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=configs, device="cpu",
        p=1, n=1, any=8, args_file=None, **overrides,
    )  # fmt: skip
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(overrides)
    net = parser.get_parsed_content("network_def")
    expected = "InvertedNet" if mixins else "UNet"
    assert type(net).__name__ == expected
    assert net(torch.zeros(1, 1, 64, 64)).shape == (1, len(STRUCTURES), 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("mixins", [[], ["label_map.yaml"]], ids=["multi_label", "label_map"])
def test_train_evaluate_infer_end_to_end(dataset: tuple[Path, Path], tmp_path: Path, mixins: list[str]) -> None:
    data, manifest = dataset
    paths = dict(dataset_dir=data, datalist=manifest, run_dir=tmp_path / "run", **SMALL)
    bundle_run(["train.yaml", *mixins], **paths, num_epochs=2, val_interval=1)
    assert (tmp_path / "run" / "model.pt").is_file()

    evaluation = tmp_path / "eval"
    bundle_run(["train.yaml", *mixins, "evaluate.yaml"], **paths, ckpt_path=tmp_path / "run" / "model.pt", output_dir=evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert set(metrics["classes"]) == set(STRUCTURES)
    assert {"dice", "iou", "hd95"} <= set(metrics["classes"]["heart"])
    assert "ctr_abs_error" in metrics["case_measures"]
    assert metrics["pixel_confusion_matrix"]["labels"] == ["background", *STRUCTURES]
    assert metrics["settings"]["multi_label"] is not bool(mixins)
    with open(evaluation / "metrics_per_case.csv") as f:
        row = next(csv.DictReader(f))
    assert {"dice_right_clavicle", "iou_left_lung", "ctr_truth", "ctr_pred", "ctr_abs_error"} <= set(row)
    assert row["qc_flag"] in ("true", "false") and 0 < float(row["qc_score"]) <= 1  # extra_key: qc
    assert 0.2 < float(row["ctr_truth"]) < 0.8  # the drawn heart is about 0.4 of the thorax

    out = tmp_path / "out"
    bundle_run(
        ["inference.yaml", *mixins], dataset_dir=data / "images", output_dir=out,
        ckpt_path=tmp_path / "run" / "model.pt", save_overlay=True, **SMALL,
    )  # fmt: skip
    stem = "case00"
    expected = {"qc.csv", f"{stem}_seg.png", f"{stem}_measurements.json", f"{stem}_overlay.png"} | {
        f"{stem}_{s}.png" for s in STRUCTURES
    }
    assert expected <= {p.name for p in out.iterdir()}
    label_map = np.array(Image.open(out / f"{stem}_seg.png"))
    assert label_map.shape == (96, 96) and label_map.max() <= len(STRUCTURES)
    for structure in STRUCTURES:
        mask = np.array(Image.open(out / f"{stem}_{structure}.png"))
        assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 1}
    assert "cardiothoracic_ratio" in json.loads((out / f"{stem}_measurements.json").read_text())


@pytest.mark.real_data
@pytest.mark.slow
def test_shipped_model_on_real_radiographs(data_dir: Path, tmp_path: Path) -> None:
    """The committed model on three JSRT test-split cases, at full resolution."""
    model = BUNDLE / "models" / "model.pt"
    if not model.is_file():
        pytest.skip(f"no shipped model at {model}")
    jsrt = data_dir / "jsrt_scr"
    cases = json.loads((REPO / "data_manifests" / "jsrt_scr.json").read_text())["testing"][:3]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in cases:
        (inputs / Path(case["image"]).name).symlink_to(jsrt / case["image"])
    out = tmp_path / "out"
    bundle_run(["inference.yaml"], dataset_dir=inputs, output_dir=out)
    # Sanity floors for a working pipeline, not accuracy claims (those are in the model card):
    # JPCLN002, the hardest left lung of the test split, scores 0.89.
    floor = {"right_lung": 0.93, "left_lung": 0.87, "heart": 0.85, "right_clavicle": 0.7, "left_clavicle": 0.7}
    for case in cases:
        stem = Path(case["image"]).stem
        for structure, truth_path in zip(STRUCTURES, case["label"]):
            truth = np.array(Image.open(jsrt / truth_path)) > 127
            pred = np.array(Image.open(out / f"{stem}_{structure}.png")) == 1
            dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
            assert dice > floor[structure], f"{stem} {structure}: Dice {dice:.3f}"
        ratio = json.loads((out / f"{stem}_measurements.json").read_text())["cardiothoracic_ratio"]
        assert 0.3 < ratio < 0.7
