"""Manifest building, validation of bad dataset folders, and split loading."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

from scripts.imageio_checks import ImageReadError, check_readable, list_image_files
from scripts.manifest import ManifestError, build_manifest, load_split, main, mask_value_problem

SIZE = 32
MANIFEST = Path(__file__).resolve().parents[1] / "data_manifests" / "montgomery.json"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mask(i: int = 0) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 4 : 6 + i % 10] = 255
    return mask


def make_dataset(root: Path, n: int = 20) -> Path:
    """``n`` random images with box masks; names end in _0/_1 like Montgomery's."""
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"case_{i:03d}_{i % 2}.png"
        _save(root / "images" / name, rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
        _save(root / "masks" / name, _mask(i))
    return root


def _images(manifest: dict, split: str) -> list[str]:
    return [item["image"] for item in manifest[split]]


def test_split_sizes_and_relative_paths(tmp_path: Path) -> None:
    manifest = build_manifest(make_dataset(tmp_path), name="toy")
    assert (manifest["numTraining"], manifest["numValidation"], manifest["numTest"]) == (14, 2, 4)
    assert manifest["name"] == "toy" and manifest["tensorImageSize"] == "2D"
    assert manifest["labels"] == {"0": "background", "1": "lung"}
    items = manifest["training"] + manifest["validation"] + manifest["testing"]
    assert sorted(item["image"] for item in items) == [f"images/case_{i:03d}_{i % 2}.png" for i in range(20)]
    assert all(item["label"] == item["image"].replace("images/", "masks/", 1) for item in items)


def test_split_is_seeded(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    assert build_manifest(tmp_path, seed=3) == build_manifest(tmp_path, seed=3)
    assert _images(build_manifest(tmp_path, seed=3), "testing") != _images(build_manifest(tmp_path, seed=4), "testing")


def test_stratified_split_keeps_strata_balanced(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    for seed in range(5):
        manifest = build_manifest(tmp_path, seed=seed, stratify=r"_(\d)$")
        for split, size in (("validation", 2), ("testing", 4)):
            assert sum(name.endswith("_1.png") for name in _images(manifest, split)) == size // 2


def test_folds_cover_training_and_leave_validation_empty(tmp_path: Path) -> None:
    manifest = build_manifest(make_dataset(tmp_path), folds=4)
    assert manifest["numValidation"] == 0 and manifest["validation"] == []
    assert manifest["numTraining"] + manifest["numTest"] == 20
    folds = [item["fold"] for item in manifest["training"]]
    assert sorted(set(folds)) == [0, 1, 2, 3] and all(folds.count(f) == 4 for f in range(4))


def test_load_split_selects_folds(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data")
    out = tmp_path / "kfold.json"
    assert main([str(dataset), "--out", str(out), "--folds", "4"]) == 0
    train, val = load_split(out, dataset, "training", fold=1), load_split(out, dataset, "validation", fold=1)
    assert {item["fold"] for item in val} == {1} and 1 not in {item["fold"] for item in train}
    assert len(train) + len(val) == json.loads(out.read_text())["numTraining"]
    assert all(Path(item["image"]).is_absolute() and Path(item["label"]).is_file() for item in train + val)
    assert len(load_split(out, dataset, "testing", fold=1)) == 4
    with pytest.raises(ValueError, match="pass a fold"):
        load_split(out, dataset, "validation")
    with pytest.raises(ValueError, match="has folds"):
        load_split(out, dataset, "training", fold=7)


def test_load_split_errors_name_the_manifest(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data")
    out = tmp_path / "plain.json"
    assert main([str(dataset), "--out", str(out)]) == 0
    assert len(load_split(out, dataset, "validation")) == 2
    for kwargs in ({"split": "train"}, {"split": "training", "fold": 0}):
        with pytest.raises(ValueError, match="plain.json"):
            load_split(out, dataset, **kwargs)
    with pytest.raises(ValueError, match="missing.json does not exist"):
        load_split(tmp_path / "missing.json", dataset, "training")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json cannot be read"):
        load_split(tmp_path / "bad.json", dataset, "training")
    with pytest.raises(ValueError, match="dataset_dir"):
        load_split(out, tmp_path / "elsewhere", "training")
    first = json.loads(out.read_text())["training"][0]["image"]
    (dataset / first).unlink()
    with pytest.raises(ValueError, match=r"(?s)1 of 28 files .* missing .*dataset_dir"):
        load_split(out, dataset, "training")


def test_anti_aliased_and_other_format_masks_are_accepted(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=4)
    soft = _mask()
    soft[8:24, 5] = 128  # 16 edge pixels of 1024 (1.6%) between 0 and 255
    _save(tmp_path / "masks" / "case_000_0.png", soft)
    _save(tmp_path / "masks" / "case_001_1.png", _mask() // 255)
    # Same stem, another format: the .nii.gz mask pairs with the .png image.
    (tmp_path / "masks" / "case_002_0.png").unlink()
    nifti = nibabel.Nifti1Image((_mask() > 0).astype(np.uint8), np.eye(4))
    nibabel.save(nifti, tmp_path / "masks" / "case_002_0.nii.gz")
    manifest = build_manifest(tmp_path, val_fraction=0, test_fraction=0)
    assert {"image": "images/case_002_0.png", "label": "masks/case_002_0.nii.gz"} in manifest["training"]


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.array([[0, 1], [1, 0]]), None),
        (np.array([[0, 255], [255, 0]], np.uint8), None),
        (np.array([[True, False]]), None),
        (np.array([[0, 1, 2, 2]], np.uint8), "values [0, 1, 2]"),
        (np.r_[np.zeros(990), [1] * 5, [2] * 5].reshape(10, 100).astype(np.uint8), "values [0, 1, 2]"),
        (np.tile(np.arange(256, dtype=np.uint8), (4, 1)), "256 distinct values in 0..255"),
        (np.zeros((4, 4, 3), np.uint8), "3 channels"),
    ],
)
def test_mask_value_rule(mask: np.ndarray, expected: str | None) -> None:
    problem = mask_value_problem(mask)
    assert problem is None if expected is None else expected in problem


def test_bad_folder_reports_every_problem_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "data", n=10)
    (dataset / "masks" / "case_000_0.png").unlink()  # image without mask
    _save(dataset / "masks" / "orphan_0.png", _mask())  # mask without image
    _save(dataset / "masks" / "case_001_1.png", np.zeros((SIZE, SIZE + 1), np.uint8))  # size mismatch
    (dataset / "images" / "case_002_0.png").write_bytes(b"not a png at all")  # unreadable
    labels = _mask() // 255
    labels[0, :4] = 2
    _save(dataset / "masks" / "case_004_0.png", labels)  # label values 0/1/2
    _save(dataset / "masks" / "case_005_1.png", np.tile(np.arange(0, 256, 8, dtype=np.uint8), (SIZE, 1)))  # grey ramp
    bad = ["case_000_0.png", "orphan_0.png", "case_001_1.png", "case_002_0.png", "case_004_0.png", "case_005_1.png"]

    with pytest.raises(ManifestError) as error:
        build_manifest(dataset)
    lines = str(error.value).splitlines()
    assert lines[0].startswith(f"{len(bad)} problem(s)") and len(lines) == 1 + len(bad)
    assert all(sum(name in line for line in lines) == 1 for name in bad)

    out = tmp_path / "out.json"
    assert main([str(dataset), "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert all(name in stderr for name in bad) and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [dataset]


def _folder_error(dataset: Path) -> str:
    with pytest.raises(ManifestError) as error:
        build_manifest(dataset)
    return str(error.value)


def test_missing_masks_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    _save(tmp_path / "images" / "a.png", _mask())
    assert f"{tmp_path / 'masks'}: folder does not exist" in _folder_error(tmp_path)


def test_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.bmp").write_bytes(b"")
    message = _folder_error(tmp_path)
    assert f"{tmp_path / 'images'}: no supported images" in message
    assert f"{tmp_path / 'masks'}: no supported images" in message and "1 other file(s), e.g. a.bmp" in message


def test_image_folder_checks(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=3)
    (tmp_path / "images" / "case_000_0.png").rename(tmp_path / "images" / "CASE.PNG")
    (tmp_path / "images" / ".hidden.png").write_bytes(b"")
    assert [p.name for p in list_image_files(tmp_path / "images")] == ["CASE.PNG", "case_001_1.png", "case_002_0.png"]
    with pytest.raises(ImageReadError, match="not a folder"):
        list_image_files(tmp_path / "images" / "CASE.PNG")
    bad = [tmp_path / "a.png", tmp_path / "b.tif"]
    for path in bad:
        path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match=r"(?s)2 of 3 .*a\.png.*b\.tif"):
        check_readable([tmp_path / "images" / "CASE.PNG", *bad])


@pytest.mark.real_data
def test_committed_montgomery_manifest_matches_fresh_build(data_dir: Path) -> None:
    # The arguments of the command that wrote the committed file (see its description).
    fresh = build_manifest(
        data_dir / "montgomery", name="montgomery", seed=0, val_fraction=0.1, test_fraction=0.2, stratify=r"_(\d)$"
    )
    assert json.loads(MANIFEST.read_text()) == fresh
    assert (fresh["numTraining"], fresh["numValidation"], fresh["numTest"]) == (77, 11, 22)
