"""The configs repeat what MONAI Label forces them to repeat, and nothing drifts.

MONAI Label loads a bundle's train.yaml and inference.yaml each on its own, so the
network, the inferer and the image preprocessing are written in both (MONAI
configs cannot include another file). These tests check that the copies agree for
every bundle, by building both and comparing what they do, and that the blocks all
three train.yaml files share (optimiser, schedule, handlers, the TrainingRun
wiring, the workflow steps) stay identical, so a fix is made in all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.transforms import Compose, SpatialPadd
from PIL import Image

from xray_seg.shared.paths import BUNDLES

# Bundle -> mix-ins that change the network, each checked in both configs.
VARIANTS = {
    "cxr_lungs": [[]],
    "cxr_anatomy": [[], ["invertednet.yaml"]],
    "xray_tomography": [[]],
}
INFERER_SETTINGS = ("roi_size", "sw_batch_size", "overlap", "mode", "padding_mode", "sw_device", "device")
# Blocks of train.yaml that are the same text in every bundle.
SHARED_BLOCKS = ("optimizer", "lr_scheduler", "tb_writer", "train#inferer", "train#handlers", "train#key_metric",
                 "validate#dataloader", "validate#evaluator", "initialize", "run", "finalize")
# TrainingRun arguments that legitimately differ: what a resume must keep, and bundle-only options.
TRAINING_RUN_OWN = ("settings", "init_weights", "time_limit_s")


def parser(bundle: str, name: str, mixins: list[str] = ()) -> ConfigParser:
    configs = BUNDLES / bundle / "configs"
    p = ConfigParser()
    p.read_config([str(configs / name), *(str(configs / m) for m in mixins)])
    p["bundle_root"] = str(BUNDLES / bundle)
    p["device"] = "$torch.device('cpu')"
    return p


def cases() -> list[tuple[str, list[str]]]:
    return [(bundle, mixins) for bundle, variants in VARIANTS.items() for mixins in variants]


@pytest.mark.parametrize("bundle,mixins", cases())
def test_network_is_the_same_in_train_and_inference(bundle: str, mixins: list[str]) -> None:
    train, infer = parser(bundle, "train.yaml", mixins), parser(bundle, "inference.yaml", mixins)
    nets = [p.get_parsed_content("network_def") for p in (train, infer)]
    assert repr(nets[0]) == repr(nets[1])
    assert {k: v.shape for k, v in nets[0].state_dict().items()} == {k: v.shape for k, v in nets[1].state_dict().items()}


@pytest.mark.parametrize("bundle", VARIANTS)
def test_inferer_is_the_same_in_train_and_inference(bundle: str) -> None:
    inferers = [parser(bundle, name).get_parsed_content("inferer") for name in ("train.yaml", "inference.yaml")]
    assert type(inferers[0]) is type(inferers[1])
    for setting in INFERER_SETTINGS:
        assert getattr(inferers[0], setting, None) == getattr(inferers[1], setting, None), setting


@pytest.mark.parametrize("bundle", ["cxr_lungs", "cxr_anatomy"])
def test_image_preprocessing_gives_the_same_tensor(bundle: str, tmp_path: Path) -> None:
    """Validation preprocessing of train.yaml (image part) and inference.yaml, run on one
    16-bit radiograph of odd shape, give identical network inputs."""
    rng = np.random.default_rng(0)
    path = tmp_path / "scan.png"
    Image.fromarray((rng.random((150, 110)) * 60000).astype(np.uint16)).save(path)
    train = parser(bundle, "train.yaml")
    train_steps = Compose([*train.get_parsed_content("load_image"), train.get_parsed_content("resize_image"),
                           train.get_parsed_content("to_tensor")])
    infer = parser(bundle, "inference.yaml")
    infer_steps = infer.get_parsed_content("preprocessing")
    # Inference ends by padding to the window for batching, as the sliding window of
    # train.yaml pads a single image: the same zeros on the same sides.
    pad = infer_steps.transforms[-1]
    assert isinstance(pad, SpatialPadd) and list(pad.padder.spatial_size) == infer.get_parsed_content("roi_size")
    assert (pad.padder.method, pad.padder.mode) == ("symmetric", "constant")
    assert (train.get_parsed_content("inferer").padding_mode, train.get_parsed_content("inferer").cval) == ("constant", 0)
    a, b = train_steps({"image": str(path)})["image"], Compose(infer_steps.transforms[:-1])({"image": str(path)})["image"]
    assert a.shape == b.shape and max(a.shape[1:]) == train.get_parsed_content("image_size")
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_tomography_intensity_settings_agree() -> None:
    """The volume path scales intensities in code (streaming); its settings must match training's."""
    train, infer = parser("xray_tomography", "train.yaml"), parser("xray_tomography", "inference.yaml")
    for key in ("num_classes", "intensity_lower", "intensity_upper", "patch_size"):
        assert infer.get_parsed_content(key) == train.get_parsed_content(key), key


@pytest.mark.parametrize("block", SHARED_BLOCKS)
def test_blocks_shared_by_the_train_configs_are_identical(block: str) -> None:
    texts = {bundle: parser(bundle, "train.yaml")[block] for bundle in VARIANTS}
    assert all(text == texts["cxr_lungs"] for text in texts.values()), texts


def test_training_run_wiring_is_identical_across_bundles() -> None:
    runs = {bundle: dict(parser(bundle, "train.yaml")["training_run"]) for bundle in VARIANTS}
    common = [{k: v for k, v in run.items() if k not in TRAINING_RUN_OWN} for run in runs.values()]
    assert all(c == common[0] for c in common)
    for bundle, run in runs.items():  # what a resume checks names the data and the schedule
        assert {"num_epochs", "learning_rate", "datalist", "dataset_dir", "seed"} <= set(run["settings"]), bundle


def test_the_distributed_mixin_is_the_same_in_every_bundle() -> None:
    texts = {bundle: (BUNDLES / bundle / "configs" / "multi_gpu_train.yaml").read_text().replace(bundle, "BUNDLE")
             for bundle in VARIANTS}
    assert len(set(texts.values())) == 1
    for bundle in VARIANTS:  # and it applies to each train.yaml: the ids it sets exist there
        train = parser(bundle, "train.yaml")
        mixin = yaml.safe_load((BUNDLES / bundle / "configs" / "multi_gpu_train.yaml").read_text())
        for key in mixin:
            if "#" in key and not key.endswith("sampler"):
                node = train.config
                for part in key.split("#"):
                    assert part in node, (bundle, key)
                    node = node[part]


def test_the_distributed_inference_mixin_is_the_same_in_both_2d_bundles() -> None:
    bundles = ("cxr_lungs", "cxr_anatomy")
    texts = {b: (BUNDLES / b / "configs" / "multi_gpu_inference.yaml").read_text().replace(b, "BUNDLE") for b in bundles}
    assert len(set(texts.values())) == 1
    for bundle in bundles:
        infer = parser(bundle, "inference.yaml")
        mixin = yaml.safe_load((BUNDLES / bundle / "configs" / "multi_gpu_inference.yaml").read_text())
        assert "dataset" in infer.config and "data" in infer.config["dataset"], bundle
        assert set(mixin) <= set(infer.config) | {"rank", "world_size", "backend", "dataset#data", "finalize"}, bundle


def test_the_distributed_evaluation_mixin_is_the_same_in_every_bundle() -> None:
    texts = {b: (BUNDLES / b / "configs" / "multi_gpu_evaluate.yaml").read_text().replace(b, "BUNDLE") for b in VARIANTS}
    assert len(set(texts.values())) == 1
    for bundle in VARIANTS:  # it applies to train.yaml + evaluate.yaml: the ids it sets exist there
        evaluate = parser(bundle, "train.yaml", ["evaluate.yaml"])
        mixin = yaml.safe_load((BUNDLES / bundle / "configs" / "multi_gpu_evaluate.yaml").read_text())
        for key in mixin:
            if "#" in key and not key.endswith("sampler"):
                node = evaluate.config
                for part in key.split("#"):
                    assert part in node, (bundle, key)
                    node = node[part]
        # Every rank scores its cases and takes part in the report's gather; only logging is rank 0's.
        merged = parser(bundle, "train.yaml", ["evaluate.yaml", "multi_gpu_evaluate.yaml"])
        handlers = [h["_target_"] for h in merged.config["validate"]["handlers"]]
        assert "xray_seg.shared.handlers.SegmentationReport" in handlers and "CheckpointLoader" in handlers, bundle
        assert merged.config["validate"]["dataset"]["_target_"] == "CacheDataset", bundle  # cache_rate applies
        assert "check_shares" in merged.config["initialize"][0], bundle  # before the process group forms
        assert merged.config["run"] == parser(bundle, "train.yaml", ["evaluate.yaml"]).config["run"], bundle


def test_the_3d_distributed_inference_mixin_keeps_the_inference_steps() -> None:
    """xray_tomography's multi_gpu_inference.yaml repeats inference.yaml's handlers and
    initialize (a list cannot be extended by a mix-in): the copies must not drift."""
    configs = BUNDLES / "xray_tomography" / "configs"
    infer = yaml.safe_load((configs / "inference.yaml").read_text())
    mixin = yaml.safe_load((configs / "multi_gpu_inference.yaml").read_text())
    assert mixin["handlers"][1:] == infer["handlers"]
    assert mixin["handlers"][0]["_target_"] == "xray_seg.shared.handlers.StagedOutputs"
    steps = [s for s in mixin["initialize"] if "distributed" not in s and "cuda.set_device" not in s]
    assert sorted(steps) == sorted(infer["initialize"])  # the same steps; inputs checked before the group forms
    assert mixin["run"] == infer["run"]
