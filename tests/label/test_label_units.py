"""The server's pieces that do not need MONAI Label: label conversion, fine-tuning
settings, batch-norm freezing, test-time augmentation, bundle copies, environment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from xray_seg.chest.anatomy import LABEL_VALUES, STRUCTURES
from xray_seg.label import environment, finetune, labels, uncertainty, workspace
from xray_seg.label.images import dimension
from xray_seg.tomography.volume_io import VolumeMeta, read_volume, write_volume


def save_png(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def radiograph(tmp_path):
    return save_png(tmp_path / "image.png", np.random.default_rng(0).integers(0, 255, (40, 30)))


def test_lungs_label_from_a_lungs_map_and_from_an_anatomy_map(tmp_path, radiograph):
    lungs = np.zeros((40, 30), np.uint8)
    lungs[5:20, 3:10] = 1
    item = labels.lungs_item(radiograph, save_png(tmp_path / "l.png", lungs), tmp_path / "out", "a")
    np.testing.assert_array_equal(np.array(Image.open(item["label"])) > 0, lungs > 0)

    anatomy = np.zeros((40, 30), np.uint8)
    anatomy[5:20, 3:10] = LABEL_VALUES["right_lung"]
    anatomy[5:20, 15:25] = LABEL_VALUES["left_lung"]
    anatomy[25:30, 10:20] = LABEL_VALUES["heart"]
    item = labels.lungs_item(radiograph, save_png(tmp_path / "a.png", anatomy), tmp_path / "out", "b")
    np.testing.assert_array_equal(np.array(Image.open(item["label"])) > 0, np.isin(anatomy, (1, 2)))


def test_anatomy_label_becomes_one_mask_per_structure_and_lungs_only_maps_are_skipped(tmp_path, radiograph):
    anatomy = np.zeros((40, 30), np.uint8)
    for value in range(1, 6):
        anatomy[value * 5:value * 5 + 3, 2:28] = value
    item = labels.anatomy_item(radiograph, save_png(tmp_path / "a.png", anatomy), tmp_path / "out", "c")
    assert len(item["label"]) == len(STRUCTURES)
    for path, structure in zip(item["label"], STRUCTURES):
        assert structure in path
        np.testing.assert_array_equal(np.array(Image.open(path)) > 0, anatomy == LABEL_VALUES[structure])
    lungs_only = save_png(tmp_path / "l.png", (anatomy == 1).astype(np.uint8))
    assert labels.anatomy_item(radiograph, lungs_only, tmp_path / "out", "d") is None


@pytest.mark.parametrize("problem, label", [
    ("differs from the image", np.zeros((10, 10))),
    ("not labels of the chest models", np.full((40, 30), 7)),
])
def test_bad_2d_labels_are_refused_with_the_reason(tmp_path, radiograph, problem, label):
    with pytest.raises(labels.LabelError, match=problem):
        labels.lungs_item(radiograph, save_png(tmp_path / "bad.png", label), tmp_path / "out", "e")


def test_tomography_label_map_becomes_class_indices_and_unlabelled_voxels_are_refused(tmp_path):
    meta = VolumeMeta(format="nifti", shape=(4, 6, 5), dtype=np.uint16, spacing=(2.0, 1.0, 1.0))
    image = write_volume(np.arange(120, dtype=np.uint16).reshape(4, 6, 5), meta, tmp_path / "image.nii.gz")
    phases = np.random.default_rng(1).integers(1, 4, (4, 6, 5)).astype(np.uint8)
    label = write_volume(phases, VolumeMeta(format="nifti", shape=(4, 6, 5), dtype=np.uint8), tmp_path / "l.nii.gz")
    item = labels.tomography_item(str(image), str(label), tmp_path / "out", "f")
    np.testing.assert_array_equal(read_volume(item["label"])[0], phases - 1)
    phases[0, 0, 0] = 0
    unlabelled = write_volume(phases, VolumeMeta(format="nifti", shape=(4, 6, 5), dtype=np.uint8), tmp_path / "u.nii.gz")
    with pytest.raises(labels.LabelError, match="unlabelled"):
        labels.tomography_item(str(image), str(unlabelled), tmp_path / "out", "g")


def test_training_items_skip_images_of_the_other_dimension(tmp_path, radiograph):
    meta = VolumeMeta(format="nifti", shape=(4, 6, 5), dtype=np.uint8)
    volume = write_volume(np.ones((4, 6, 5), np.uint8), meta, tmp_path / "v.nii.gz")
    lungs = save_png(tmp_path / "l.png", np.ones((40, 30)))
    pairs = [{"image": radiograph, "label": lungs}, {"image": str(volume), "label": str(volume)}]
    items, skipped = labels.training_items("cxr_lungs", pairs, tmp_path / "out")
    assert [i["image"] for i in items] == [radiograph] and skipped == ["v.nii.gz"]
    assert dimension(radiograph) == 2 and dimension(volume) == 3 and dimension(tmp_path / "x.txt") is None


def test_split_validates_on_the_last_items_or_on_the_training_items():
    items = [{"image": str(i)} for i in range(5)]
    assert labels.split(items, 0.2) == (items[:4], items[4:])
    assert labels.split(items, 0) == (items, items)
    assert labels.split(items[:1], 0.5) == (items[:1], items[:1])


def test_frozen_batch_norm_keeps_its_running_statistics_while_the_network_trains():
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    assert finetune.freeze_batch_norm(network) == 1
    before = network[1].running_mean.clone()
    network.train()
    optimiser = torch.optim.SGD(network.parameters(), lr=0.1)
    for _ in range(3):
        optimiser.zero_grad()
        network(torch.randn(2, 1, 8, 8) * 5 + 3).sum().backward()
        optimiser.step()
    assert torch.equal(network[1].running_mean, before)
    assert network[1].weight.grad is not None  # the affine parameters still learn


def test_fine_tune_overrides_give_a_fresh_run_from_the_current_model(tmp_path):
    o = finetune._overrides(tmp_path / "b", tmp_path / "run", tmp_path / "d.json",
                            {**finetune.DEFAULTS, "image_size": 128}, dim=2)
    assert o["resume"] is False and o["run_dir"] == o["ckpt_dir"] == str(tmp_path / "run")
    assert o["training_run#init_weights"] == str(tmp_path / "b" / "models" / "model.pt")
    assert o["val_interval"] == 1 and o["learning_rate"] < 1e-3 and o["roi_size"] == [128, 128]


def test_tta_disagreement_is_zero_for_an_invariant_model_and_positive_otherwise():
    inputs = torch.rand(1, 1, 32, 32)
    constant = lambda x, net: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731
    assert uncertainty.disagreement(torch.nn.Identity(), inputs, constant, uncertainty.augmentations_2d()) == 0
    intensity = lambda x, net: torch.cat([x, 1 - x], dim=1) * 10  # noqa: E731
    assert uncertainty.disagreement(torch.nn.Identity(), inputs, intensity, uncertainty.augmentations_2d()) > 0
    # The 3D augmentations are flips mapped back: a per-voxel model agrees with itself.
    volume = torch.rand(1, 1, 6, 8, 8)
    assert uncertainty.disagreement(torch.nn.Identity(), volume, intensity, uncertainty.augmentations_3d()) < 1e-6


def test_bundle_copies_are_made_once_and_kept(tmp_path):
    copies = workspace.prepare(tmp_path)
    assert set(copies) == set(workspace.BUNDLE_NAMES)
    model = workspace.model_file(copies["cxr_lungs"])
    model.write_bytes(b"fine-tuned")
    workspace.prepare(tmp_path)
    assert model.read_bytes() == b"fine-tuned"
    assert not (copies["cxr_lungs"] / "docs").exists()


def test_environment_is_built_only_from_the_same_requirements(tmp_path):
    with_deps, no_deps = environment._split_requirements()
    assert no_deps == ["monailabel==0.8.5"] and "torch==2.14.1" in with_deps
    assert not environment.is_built(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    (tmp_path / environment.MARKER).write_text(json.dumps({"requirements": environment.requirements_digest()}))
    assert environment.is_built(tmp_path)
    (tmp_path / environment.MARKER).write_text(json.dumps({"requirements": "other"}))
    assert not environment.is_built(tmp_path)


def test_tomography_fine_tune_from_label_maps_promotes_only_a_model_that_validates_as_well(tmp_path):
    from xray_seg.synthetic.tomo import generate_volume

    pairs = []
    for i in range(2):
        generated = generate_volume(tmp_path / f"g{i}", shape=(24, 48, 48), seed=i, progress=False)
        image, meta = read_volume(generated["image"])
        write_volume(image, meta, tmp_path / f"v{i}.nii.gz")
        classes, label_meta = read_volume(generated["label"])
        label_meta.dtype = np.dtype(np.uint8)
        write_volume((classes + 1).astype(np.uint8), label_meta, tmp_path / f"l{i}.nii.gz")  # phases 1..3
        pairs.append({"image": str(tmp_path / f"v{i}.nii.gz"), "label": str(tmp_path / f"l{i}.nii.gz")})
    copy = workspace.prepare(tmp_path / "work")["xray_tomography"]
    shipped = workspace.model_file(copy).read_bytes()
    items, skipped = labels.training_items("xray_tomography", pairs, tmp_path / "run" / "labels")
    assert skipped == [] and [i["slices"] for i in items] == [[0, 24], [0, 24]]
    train, val = labels.split(items, 0.5)
    result = finetune.fine_tune("xray_tomography", copy, train, val, tmp_path / "run",
                                max_epochs=1, steps_per_epoch=2, patches_per_step=2)
    assert len(result["epoch_scores"]) == 1 and 0 < result["baseline"] <= 1
    assert result["promoted"] == (result["best"] >= result["baseline"])
    assert (workspace.model_file(copy).read_bytes() != shipped) == result["promoted"]
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "result.json").is_file()
