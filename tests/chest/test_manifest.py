"""Manifest building, validation of bad dataset folders, and split loading."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

from xray_seg.shared.image_checks import ImageReadError, check_readable, list_image_files
from xray_seg.chest.manifest import build_manifest, mask_value_problem
from xray_seg.cli.main import main as cli
from xray_seg.shared.splits import SPLITS, ManifestError, load_split

SIZE = 32
MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
MANIFEST = MANIFESTS / "montgomery.json"
STRUCTURES = ["right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle"]


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


def build(args: list) -> int:
    """``xray-seg manifest images --dataset_dir DATASET ...``: its exit status."""
    return cli(["manifest", "images", "--dataset_dir", *map(str, args)])


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
    assert build([dataset, "--output_file", out, "--folds", "4"]) == 0
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
    assert build([dataset, "--output_file", out]) == 0
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
    assert build([dataset, "--output_file", out]) == 2
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


# ---------------------------------------------------------------------------------------
# Multi-structure layout: masks/<structure>/<name>, one label channel per structure
# ---------------------------------------------------------------------------------------


def make_structure_dataset(root: Path, n: int = 10) -> Path:
    """``n`` random images, each with one box mask per structure; JSRT-like names."""
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"JPC{'LN' if i % 3 else 'NN'}{i:03d}.png"
        _save(root / "images" / name, rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
        for j, structure in enumerate(STRUCTURES):
            _save(root / "masks" / structure / name, _mask(i + j))
    return root


def _structure_error(dataset: Path) -> list[str]:
    with pytest.raises(ManifestError) as error:
        build_manifest(dataset, structures=STRUCTURES)
    lines = str(error.value).splitlines()
    assert lines[0].startswith(f"{len(lines) - 1} problem(s) in dataset {dataset}")
    return lines[1:]


def test_structure_manifest_lists_channel_masks_in_order(tmp_path: Path) -> None:
    manifest = build_manifest(make_structure_dataset(tmp_path), structures=STRUCTURES, stratify="^(JPC[LN]N)")
    assert (manifest["numTraining"], manifest["numValidation"], manifest["numTest"]) == (7, 1, 2)
    assert manifest["label_format"] == "multi-label channels" and manifest["structures"] == STRUCTURES
    assert manifest["labels"] == {str(i): s for i, s in enumerate(STRUCTURES)}
    for item in manifest["training"] + manifest["validation"] + manifest["testing"]:
        name = item["image"].removeprefix("images/")
        assert item["label"] == [f"masks/{s}/{name}" for s in STRUCTURES]
    # The order of the structures is the order of the channels.
    reordered = build_manifest(tmp_path, structures=STRUCTURES[::-1], stratify="^(JPC[LN]N)")
    assert reordered["labels"]["0"] == "left_clavicle"
    assert reordered["training"][0]["label"] == manifest["training"][0]["label"][::-1]
    # The split itself is the one a single-mask dataset of the same names would get.
    assert [i["image"] for i in reordered["testing"]] == [i["image"] for i in manifest["testing"]]


def test_structures_cli_and_load_split_with_label_lists(tmp_path: Path) -> None:
    dataset = make_structure_dataset(tmp_path / "data")
    out = tmp_path / "multi.json"
    spaced = " right_lung, left_lung,heart,right_clavicle,left_clavicle"  # spaces after commas are forgiven
    assert build([dataset, "--output_file", out, "--structures", spaced]) == 0
    assert json.loads(out.read_text())["structures"] == STRUCTURES
    train = load_split(out, dataset, "training")
    assert all(len(item["label"]) == 5 and all(Path(p).is_absolute() and Path(p).is_file() for p in item["label"])
               for item in train)
    (Path(train[0]["label"][2])).unlink()  # one structure mask of one case
    with pytest.raises(ValueError, match=r"(?s)1 of 42 files .* missing .*heart"):
        load_split(out, dataset, "training")
    manifest = json.loads(out.read_text())
    manifest["training"][0]["label"] = []
    (tmp_path / "empty_label.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="non-empty list of paths"):
        load_split(tmp_path / "empty_label.json", dataset, "training")


def test_structure_problems_are_all_reported_once_naming_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_structure_dataset(tmp_path / "data", n=8)
    masks, images = dataset / "masks", dataset / "images"
    (masks / "heart" / "JPCNN000.png").unlink()  # one structure missing for one case
    _save(masks / "left_clavicle" / "JPCLN099.png", _mask())  # orphan mask
    _save(masks / "heart" / "JPCLN001.png", np.zeros((SIZE, SIZE + 1), np.uint8))  # masks of one case disagree
    (images / "JPCLN002.png").write_bytes(b"not a png")  # unreadable image ...
    _save(masks / "left_lung" / "JPCLN002.png", np.zeros((SIZE, SIZE - 2), np.uint8))  # ... and disagreeing masks
    for structure in STRUCTURES:  # every mask of a case differs from its image
        _save(masks / structure / "JPCNN003.png", np.zeros((SIZE + 8, SIZE + 8), np.uint8))
    _save(masks / "right_lung" / "JPCLN004.png", np.tile(np.arange(0, 256, 8, dtype=np.uint8), (SIZE, 1)))
    (masks / "left_clavicle" / "JPCLN005.png").write_bytes(b"\x89PNG truncated")  # unreadable mask

    lines = _structure_error(dataset)
    expected = [
        images / "JPCNN000.png", masks / "left_clavicle" / "JPCLN099.png", masks / "heart" / "JPCLN001.png",
        images / "JPCLN002.png", masks / "left_lung" / "JPCLN002.png",
        *(masks / s / "JPCNN003.png" for s in STRUCTURES),
        masks / "right_lung" / "JPCLN004.png", masks / "left_clavicle" / "JPCLN005.png",
    ]
    assert sorted(line.split(": ")[0] for line in lines) == sorted(map(str, expected))
    by_file = {line.split(": ")[0]: line for line in lines}
    assert f"no heart mask of the same name in {masks / 'heart'}" in by_file[str(images / "JPCNN000.png")]
    assert f"no image of the same name in {images}" in by_file[str(masks / "left_clavicle" / "JPCLN099.png")]
    # Masks of one case with different sizes: both files and both sizes in one line.
    disagree = by_file[str(masks / "heart" / "JPCLN001.png")]
    assert f"mask size {SIZE}x{SIZE + 1} differs from image size {SIZE}x{SIZE}" in disagree
    assert f"mask size {SIZE}x{SIZE} of {masks / 'right_lung' / 'JPCLN001.png'} (same case)" in disagree
    no_image = by_file[str(masks / "left_lung" / "JPCLN002.png")]
    other = masks / "right_lung" / "JPCLN002.png"
    assert f"mask size {SIZE}x{SIZE - 2} differs from mask size {SIZE}x{SIZE} of {other}" in no_image
    assert "cannot read image" in by_file[str(images / "JPCLN002.png")]
    too_big = f"{SIZE + 8}x{SIZE + 8} differs from image size {SIZE}x{SIZE} of {images / 'JPCNN003.png'}"
    assert all(too_big in by_file[str(masks / s / "JPCNN003.png")] for s in STRUCTURES)
    assert "mask is not binary" in by_file[str(masks / "right_lung" / "JPCLN004.png")]
    assert "cannot read image" in by_file[str(masks / "left_clavicle" / "JPCLN005.png")]

    out = tmp_path / "out.json"
    assert build([dataset, "--output_file", out, "--structures", ",".join(STRUCTURES)]) == 2
    stderr = capsys.readouterr().err
    assert all(str(path) in stderr for path in expected) and "Traceback" not in stderr and not out.exists()


def test_missing_or_empty_structure_folder_is_reported_once(tmp_path: Path) -> None:
    dataset = make_structure_dataset(tmp_path / "data", n=4)
    for path in (dataset / "masks" / "heart").iterdir():
        path.unlink()
    (dataset / "masks" / "heart").rmdir()
    (dataset / "masks" / "left_lung" / "JPCLN001.png").unlink()
    for path in (dataset / "masks" / "right_clavicle").iterdir():
        path.rename(path.with_suffix(".txt"))  # a folder with no images in it
    assert _structure_error(dataset) == [
        f"{dataset / 'masks' / 'heart'}: folder does not exist",
        f"{dataset / 'masks' / 'right_clavicle'}: no supported images (.png .jpg .jpeg .tif .tiff .dcm .nii .nii.gz); "
        "found 4 other file(s), e.g. JPCLN001.txt",
        f"{dataset / 'images' / 'JPCLN001.png'}: no left_lung mask of the same name in "
        f"{dataset / 'masks' / 'left_lung'}",
    ]


def test_missing_masks_or_images_folder_is_reported_once(tmp_path: Path) -> None:
    dataset = make_structure_dataset(tmp_path / "no_masks", n=3)
    for path in sorted((dataset / "masks").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (dataset / "masks").rmdir()
    assert _structure_error(dataset) == [f"{dataset / 'masks'}: folder does not exist"]
    dataset = make_structure_dataset(tmp_path / "no_images", n=3)
    for path in (dataset / "images").iterdir():
        path.unlink()
    assert _structure_error(dataset) == [
        f"{dataset / 'images'}: no supported images (.png .jpg .jpeg .tif .tiff .dcm .nii .nii.gz)"
    ]


@pytest.mark.parametrize(
    ("structures", "labels", "expected"),
    [
        ([], None, "structures is empty"),
        ("heart", None, "list of names"),
        (["heart", "heart"], None, "named more than once: heart"),
        (["heart", "../lungs", ""], None, "'../lungs' is not a folder name"),
        (["heart"], {"0": "background", "1": "heart"}, "labels cannot be given with structures"),
    ],
)
def test_bad_structures_argument(tmp_path: Path, structures: list[str], labels: dict | None, expected: str) -> None:
    make_structure_dataset(tmp_path, n=4)
    with pytest.raises(ManifestError, match=expected.replace(".", r"\.")):
        build_manifest(tmp_path, structures=structures, labels=labels)


@pytest.mark.real_data
def test_committed_jsrt_manifest_matches_fresh_build(data_dir: Path) -> None:
    # The arguments of the command that wrote the committed file (see its description).
    fresh = build_manifest(
        data_dir / "jsrt_scr", name="jsrt_scr", seed=0, val_fraction=0.1, test_fraction=0.2,
        stratify="^(JPC[LN]N)", structures=STRUCTURES,
    )
    assert json.loads((MANIFESTS / "jsrt_scr.json").read_text()) == fresh
    assert (fresh["numTraining"], fresh["numValidation"], fresh["numTest"]) == (135, 19, 38)
    nodules = {split: sum("JPCLN" in item["image"] for item in fresh[split]) for split in SPLITS}
    assert nodules == {"training": 83, "validation": 12, "testing": 23}  # 118 of 192 have a nodule
