"""The xray_tomography bundle: configs, network, and train/evaluate/infer end to end.

The end-to-end runs use a small synthetic tomography (xray_seg.synthetic.tomo) and
tiny patches, so they check the wiring, not the accuracy; the shipped model is
checked on the real soc_ptycho test slab when the data is here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out

from bundle_runs import run_bundle

from xray_seg.shared.atomic import write_text
from xray_seg.tomography.slab_manifest import build_slab_manifest
from xray_seg.synthetic.tomo import generate_volume
from xray_seg.tomography.volume_io import read_volume

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle" / "xray_tomography"
CONFIGS = BUNDLE / "configs"
CLASSES = ["pores", "zirconia", "nickel"]
TINY = {"patch_size": [8, 32, 32], "patches_per_step": 2, "steps_per_epoch": 2, "label_values": [0, 1, 2]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tomo") / "data"
    generate_volume(root, shape=(28, 48, 48), seed=0, fmt="slices", feature_size=6.0, progress=False)
    manifest = root.parent / "manifest.json"
    write_text(manifest, json.dumps(build_slab_manifest(root, gap=2, val_fraction=0.2, test_fraction=0.25)))
    return root, manifest


def bundle_run(config_files: list[str], expect: int = 0, **overrides: object) -> subprocess.CompletedProcess:
    return run_bundle(BUNDLE, config_files, expect, **overrides)


def test_train_and_infer_workflows_have_the_model_zoo_properties(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    data, manifest = dataset
    common = dict(meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"), bundle_root=str(BUNDLE))
    train = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"), workflow_type="train", dataset_dir=str(data), datalist=str(manifest),
        run_dir=str(tmp_path / "run"), label_values=[0, 1, 2], **common,
    )  # fmt: skip
    train.initialize()
    assert not train.check_properties()
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "untrained.pt")
    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), workflow_type="infer", dataset_dir=str(data / "images"),
        output_dir=str(tmp_path / "out"), ckpt_path=str(tmp_path / "untrained.pt"), **common,
    )  # fmt: skip
    infer.initialize()
    assert not infer.check_properties()


@pytest.mark.parametrize("mixins,shape", [([], (1, 1, 32, 96, 96)), (["slicewise.yaml"], (1, 1, 128, 128))],
                         ids=["3d", "slicewise"])
def test_networks_verify_in_and_out(mixins: list[str], shape: tuple[int, ...]) -> None:
    configs = [str(CONFIGS / "train.yaml"), *(str(CONFIGS / m) for m in mixins)]
    if not mixins:  # metadata.json describes the shipped 3D network's patches
        verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=configs,
                          device="cpu", p=1, n=1, any=8, args_file=None)
    parser = ConfigParser()
    parser.read_config(configs)
    net = parser.get_parsed_content("network_def")
    assert net(torch.zeros(shape)).shape == (1, 3, *shape[2:])


@pytest.mark.slow
@pytest.mark.parametrize("mixins", [[], ["slicewise.yaml"]], ids=["3d", "slicewise"])
def test_train_evaluate_infer_end_to_end(dataset: tuple[Path, Path], tmp_path: Path, mixins: list[str]) -> None:
    data, manifest = dataset
    tiny = dict(TINY, patch_size=[1, 32, 32], slice_roi=[32, 32]) if mixins else TINY
    paths = dict(dataset_dir=data, datalist=manifest, run_dir=tmp_path / "run", **tiny)
    bundle_run(["train.yaml", *mixins], **paths, num_epochs=2, val_interval=1, time_limit_s=900)
    assert (tmp_path / "run" / "model.pt").is_file()
    assert any((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))

    evaluation = tmp_path / "eval"
    bundle_run(["train.yaml", *mixins, "evaluate.yaml"], **paths, ckpt_path=tmp_path / "run" / "model.pt", output_dir=evaluation, collage_slices=3)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert set(metrics["classes"]) == set(CLASSES)
    assert {"dice", "iou", "accuracy", "precision", "recall", "f1", "hd95"} <= set(metrics["classes"]["nickel"])
    assert metrics["pixel_confusion_matrix"]["labels"] == CLASSES
    assert 0 <= metrics["case_measures"]["boundary_accuracy"] <= 1
    baseline = json.loads((evaluation / "baseline_metrics.json").read_text())
    assert baseline["thresholds"][0] < baseline["thresholds"][1] and 0.5 < baseline["mean_dice"] <= 1
    assert (evaluation / "collage.png").stat().st_size > 0

    if mixins:
        return  # the inference contract is the 3D network's
    inputs = tmp_path / "in"
    inputs.mkdir()
    image, _ = read_volume(data / "images")
    tifffile.imwrite(inputs / "stack.tif", image)
    (inputs / "slices").symlink_to(data / "images")
    out = tmp_path / "out"
    bundle_run(["inference.yaml"], dataset_dir=inputs, output_dir=out, ckpt_path=tmp_path / "run" / "model.pt",
               patch_size=TINY["patch_size"], slab_depth=8, halo=4)
    assert sorted(p.name for p in out.iterdir()) == ["slices_seg", "stack_seg.tif"]
    a, _ = read_volume(out / "stack_seg.tif")
    b, meta = read_volume(out / "slices_seg")
    assert a.shape == image.shape and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1, 2}
    np.testing.assert_array_equal(a, b)
    assert meta.slice_names == sorted(p.name for p in (data / "images").iterdir())


def test_inference_stops_on_a_bad_volume_before_writing(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = dataset
    inputs = tmp_path / "in"
    (inputs / "stack").mkdir(parents=True)
    for i, name in enumerate(sorted((data / "images").iterdir())):
        if i != 3:  # a gap in the numbering
            (inputs / "stack" / name.name).symlink_to(name)
    out = tmp_path / "out"
    result = bundle_run(["inference.yaml"], expect=2, dataset_dir=inputs, output_dir=out, ckpt_path=tmp_path / "none.pt")
    assert "ERROR:" in result.stderr and "stack" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.real_data
@pytest.mark.slow
def test_shipped_model_on_the_real_test_slab(data_dir: Path, tmp_path: Path) -> None:
    """The committed model on 12 slices of the held-out soc_ptycho slab, through the inference contract."""
    model = BUNDLE / "models" / "model.pt"
    if not model.is_file():
        pytest.skip(f"no shipped model at {model}")
    soc = data_dir / "soc_ptycho"
    start, stop = json.loads((REPO / "data_manifests" / "soc_ptycho.json").read_text())["testing"][0]["slices"]
    images = sorted((soc / "images").iterdir())[start:start + 12]
    labels = sorted((soc / "labels").iterdir())[start:start + 12]
    stack = tmp_path / "in" / "slab"
    stack.mkdir(parents=True)
    for path in images:
        (stack / path.name).symlink_to(path)
    out = tmp_path / "out"
    bundle_run(["inference.yaml"], dataset_dir=tmp_path / "in", output_dir=out)
    pred, _ = read_volume(out / "slab_seg")
    truth = np.stack([tifffile.imread(p) for p in labels]) // 127  # 0/128/255 -> 0/1/2
    dice = [2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()) for c in range(3)]
    assert min(dice) > 0.95, dice


def test_training_patches_from_a_slab_thinner_than_a_patch(dataset: tuple[Path, Path]) -> None:
    data, _ = dataset
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"patch_size": [8, 16, 16], "patches_per_step": 3, "label_values": [0, 1, 2]})
    transform = parser.get_parsed_content("train#preprocessing")
    patches = transform({"image": str(data / "images"), "label": str(data / "labels"), "slices": [0, 3]})
    assert len(patches) == 3
    assert all(p["image"].shape == (1, 8, 16, 16) and p["label"].shape == (1, 8, 16, 16) for p in patches)
