"""Build a MONAI datalist (manifest) from a folder of images and same-named masks.

    xray-seg manifest images --dataset_dir DATASET_DIR --output_file data_manifests/NAME.json [--seed 0]
        [--val_fraction 0.1] [--test_fraction 0.2] [--folds 0] [--stratify REGEX]
        [--structures right_lung,left_lung,heart,right_clavicle,left_clavicle]

One mask per image (``masks/<name>``) gives a single-label manifest. With
``--structures``, each structure has its own folder (``masks/<structure>/<name>``)
and each item's "label" is the list of its structure masks, which MONAI's
LoadImaged stacks into one channel per structure (multi-label: structures may overlap).

Paths in the manifest are relative to DATASET_DIR, so one manifest serves every
machine; ``load_split`` joins them onto the dataset folder given at run time.
Every case is decoded and checked before anything is written, and all problems
are reported together so that one run finds everything that needs fixing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType

import numpy as np

from xray_seg.shared.splits import ManifestError
from xray_seg.shared.image_checks import ImageReadError, image_stem, list_image_files, read_image_array

DEFAULT_LABELS: Mapping[str, str] = MappingProxyType({"0": "background", "1": "lung"})
# Anti-aliased 0/255 masks (Montgomery: ~0.1% edge pixels in between) are thresholded at >127.
MIN_BINARY_FRACTION = 0.97

Stratify = str | Callable[[str], str] | None
# The "label_format" of a manifest built with structures: channel i is structure i, and
# channels may overlap (clavicles lie over the lungs), so they are not one label map.
MULTI_LABEL = "multi-label channels"


def mask_value_problem(mask: np.ndarray) -> str | None:
    """Why ``mask`` is not a binary mask, or None when it is one."""
    if mask.ndim == 3:
        return f"mask has {mask.shape[2]} channels; expected a single-channel mask"
    values = np.unique(mask)
    if np.isin(values, (0, 1)).all() or np.isin(values, (0, 255)).all():
        return None
    binary_fraction = float(np.isin(mask, (0, 255)).mean())
    anti_aliased = (
        values.min() >= 0 and values.max() == 255 and np.all(values == np.round(values))
        and binary_fraction >= MIN_BINARY_FRACTION
    )
    if anti_aliased:
        return None
    found = (
        f"values {values.tolist()}" if len(values) <= 8
        else f"{len(values)} distinct values in {values.min()}..{values.max()}"
    )
    return (
        f"mask is not binary: found {found}, {binary_fraction:.1%} of pixels 0 or 255; expected 0/1, "
        f"0/255, or anti-aliased 0/255 with at least {MIN_BINARY_FRACTION:.0%} of pixels 0 or 255"
    )


def _scan(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Supported files in ``folder`` by stem; folder problems go to ``problems``."""
    try:
        files = list_image_files(folder)
    except ImageReadError as e:
        problems.append(str(e))
        return {}
    by_stem: dict[str, Path] = {}
    for path in files:
        stem = image_stem(path)
        if stem in by_stem:
            problems.append(f"{path}: same name as {by_stem[stem].name}; cannot tell which one to use")
        else:
            by_stem[stem] = path
    return by_stem


def _read(path: Path, problems: list[str]) -> np.ndarray | None:
    try:
        return read_image_array(path)
    except ImageReadError as e:
        problems.append(str(e))
        return None


def validate_dataset(
    dataset_dir: str | os.PathLike,
    images: str = "images",
    masks: str = "masks",
    structures: Sequence[str] | None = None,
) -> dict[str, tuple[Path, Path]] | dict[str, tuple[Path, tuple[Path, ...]]]:
    """Decode and check every case; return stem -> (image, mask) paths.

    A mask pairs with the image of the same stem ("a.png" with "a.png" or "a.tif").
    With ``structures`` the masks are ``masks/<structure>/<stem>.*`` and each case maps
    to (image, masks in ``structures`` order). Raises one ManifestError that lists
    every problem, one per line.
    """
    if structures is not None:
        return _validate_structures(Path(dataset_dir), images, masks, structures)
    dataset_dir = Path(dataset_dir)
    image_dir, mask_dir = dataset_dir / images, dataset_dir / masks
    problems: list[str] = []
    image_files, mask_files = _scan(image_dir, problems), _scan(mask_dir, problems)
    # A missing or empty folder is reported once, not once per case of the other folder.
    pairing = bool(image_files) and bool(mask_files)
    cases: dict[str, tuple[Path, Path]] = {}
    for stem in sorted(image_files.keys() | mask_files.keys()):
        image_path, mask_path = image_files.get(stem), mask_files.get(stem)
        image = _read(image_path, problems) if image_path else None
        mask = _read(mask_path, problems) if mask_path else None
        if pairing and mask_path is None:
            problems.append(f"{image_path}: no mask of the same name in {mask_dir}")
        if pairing and image_path is None:
            problems.append(f"{mask_path}: no image of the same name in {image_dir}")
        if mask is not None and (problem := mask_value_problem(mask)):
            problems.append(f"{mask_path}: {problem}")
        if image is not None and mask is not None and image.shape[:2] != mask.shape[:2]:
            problems.append(
                f"{mask_path}: mask size {mask.shape[0]}x{mask.shape[1]} differs from "
                f"image size {image.shape[0]}x{image.shape[1]} of {image_path}"
            )
        if image_path and mask_path:
            cases[stem] = (image_path, mask_path)
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in dataset {dataset_dir}:\n" + "\n".join(problems))
    return cases


def _size(array: np.ndarray) -> str:
    return f"{array.shape[0]}x{array.shape[1]}"


def _structure_size_problems(
    image_path: Path | None, image: np.ndarray | None, masks: dict[Path, np.ndarray]
) -> list[str]:
    """One line per mask of a case whose size differs from its image or from the case's other masks.

    The image is the reference when it could be read, else the case's first mask;
    when the masks disagree among themselves the line also names another mask, so
    that both files and sizes are in it.
    """
    shapes = {path: mask.shape[:2] for path, mask in masks.items()}
    if not shapes:
        return []
    reference = image.shape[:2] if image is not None else next(iter(shapes.values()))
    masks_disagree = len(set(shapes.values())) > 1
    problems = []
    for path, shape in shapes.items():
        if shape == reference:
            continue
        against = [f"image size {_size(image)} of {image_path}"] if image is not None else []
        if masks_disagree:
            others = [q for q in shapes if q != path and shapes[q] != shape]
            other = next((q for q in others if shapes[q] == reference), others[0])
            against.append(f"mask size {_size(masks[other])} of {other} (same case)")
        problems.append(f"{path}: mask size {_size(masks[path])} differs from " + " and ".join(against))
    return problems


def _validate_structures(
    dataset_dir: Path, images: str, masks: str, structures: Sequence[str]
) -> dict[str, tuple[Path, tuple[Path, ...]]]:
    """``validate_dataset`` for one mask folder per structure: ``masks/<structure>/``."""
    image_dir, mask_root = dataset_dir / images, dataset_dir / masks
    problems: list[str] = []
    image_files = _scan(image_dir, problems)
    # A missing masks folder is one problem, not one per structure folder inside it.
    if not mask_root.is_dir():
        problems.append(f"{mask_root}: {'not a folder' if mask_root.exists() else 'folder does not exist'}")
        structure_files: dict[str, dict[str, Path]] = {s: {} for s in structures}
    else:
        structure_files = {s: _scan(mask_root / s, problems) for s in structures}
    # Missing or empty folders were reported once above; no per-case lines for them.
    usable = [s for s in structures if structure_files[s]]
    stems = set(image_files).union(*(structure_files[s] for s in usable))
    cases: dict[str, tuple[Path, tuple[Path, ...]]] = {}
    for stem in sorted(stems):
        image_path = image_files.get(stem)
        image = _read(image_path, problems) if image_path else None
        masks_read: dict[Path, np.ndarray] = {}
        for structure in usable:
            mask_path = structure_files[structure].get(stem)
            if mask_path is None:
                if image_path is not None:  # else an orphan of other structures, reported as such
                    problems.append(f"{image_path}: no {structure} mask of the same name in {mask_root / structure}")
                continue
            if image_path is None and image_files:  # an empty image folder was reported once
                problems.append(f"{mask_path}: no image of the same name in {image_dir}")
            mask = _read(mask_path, problems)
            if mask is None:
                continue
            if problem := mask_value_problem(mask):
                problems.append(f"{mask_path}: {problem}")
            masks_read[mask_path] = mask
        problems += _structure_size_problems(image_path, image, masks_read)
        paths = tuple(structure_files[s].get(stem) for s in structures)
        if image_path and all(paths):
            cases[stem] = (image_path, paths)
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in dataset {dataset_dir}:\n" + "\n".join(problems))
    return cases


def _group_keys(stems: Sequence[str], stratify: Stratify) -> dict[str, str]:
    """Stratum of each stem: the callable's result, or the regex match (group 1 if any)."""
    if callable(stratify):
        return {s: stratify(s) for s in stems}
    try:
        pattern = re.compile(stratify)
    except re.error as e:
        raise ManifestError(f"stratify pattern {stratify!r} is not a valid regex: {e}") from e
    matches = {s: pattern.search(s) for s in stems}
    unmatched = [s for s, m in matches.items() if m is None]
    if unmatched:
        raise ManifestError(
            f"{len(unmatched)} case name(s) do not match the stratify pattern {stratify!r}:\n" + "\n".join(unmatched)
        )
    return {s: m.group(1 if pattern.groups else 0) for s, m in matches.items()}


def _seeded_order(stems: Sequence[str], seed: int, stratify: Stratify) -> list[str]:
    """A seeded shuffle; with ``stratify``, every prefix holds each stratum in proportion."""
    rng = np.random.default_rng(seed)
    stems = sorted(stems)
    if stratify is None:
        return [stems[i] for i in rng.permutation(len(stems))]
    groups: dict[str, list[str]] = {}
    for stem, key in _group_keys(stems, stratify).items():
        groups.setdefault(key, []).append(stem)
    # Systematic sampling: spread each shuffled stratum evenly over [0, 1), random start.
    positioned = []
    for key in sorted(groups):
        members = [groups[key][i] for i in rng.permutation(len(groups[key]))]
        start = rng.random()
        positioned += [((i + start) / len(members), stem) for i, stem in enumerate(members)]
    return [stem for _, stem in sorted(positioned)]


def _split_size(n: int, fraction: float) -> int:
    # A split that was asked for never rounds away to nothing.
    return max(1, round(n * fraction)) if fraction > 0 else 0


def _check_params(val_fraction: float, test_fraction: float, folds: int) -> None:
    problems = []
    for flag, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            problems.append(f"{flag} must be in [0, 1), got {fraction}")
    if folds == 0 and val_fraction + test_fraction >= 1:
        problems.append(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    if folds == 1 or folds < 0:
        problems.append(f"folds must be 0 (no cross-validation) or at least 2, got {folds}")
    if problems:
        raise ManifestError("\n".join(problems))


def _check_structures(structures: Sequence[str], labels: Mapping[str, str] | None) -> None:
    problems = []
    if isinstance(structures, str):  # a bare string would be taken letter by letter
        problems.append(f"structures must be a list of names, got the string {structures!r}")
    elif not structures:
        problems.append("structures is empty: name at least one mask folder")
    else:
        for name in structures:
            if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
                problems.append(f"structure {name!r} is not a folder name inside the masks folder")
        duplicates = sorted({n for n in structures if list(structures).count(n) > 1})
        if duplicates:
            problems.append(f"structures named more than once: {', '.join(map(str, duplicates))}")
    if labels is not None:
        problems.append("labels cannot be given with structures: the channel names are the structures")
    if problems:
        raise ManifestError("\n".join(problems))


def build_manifest(
    dataset_dir: str | os.PathLike,
    *,
    images: str = "images",
    masks: str = "masks",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    folds: int = 0,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
    stratify: Stratify = None,
    structures: Sequence[str] | None = None,
) -> dict:
    """Check the dataset and return a seeded train/validation/test datalist.

    With ``folds`` = K > 1 the non-test cases all go to "training" with a "fold" key
    0..K-1 (Auto3DSeg convention), "validation" stays empty and ``val_fraction`` is
    unused. ``stratify`` (a regex on the file stem, group 1 if it has one, or a
    callable stem -> stratum) keeps each stratum's share equal across splits.

    ``labels`` (default {"0": "background", "1": "lung"}) names the values of a
    single-label mask. With ``structures``, masks are ``masks/<structure>/<stem>.*``,
    each item's "label" is the list of its structure masks in ``structures`` order
    (one channel each once loaded), and the manifest records "structures",
    "label_format": "multi-label channels" and "labels" {"0": structures[0], ...}
    naming channels rather than values; ``labels`` must then be left out.
    """
    _check_params(val_fraction, test_fraction, folds)
    if structures is not None:
        _check_structures(structures, labels)
    dataset_dir = Path(dataset_dir)
    cases = validate_dataset(dataset_dir, images, masks, structures)
    order = _seeded_order(list(cases), seed, stratify)
    n = len(order)
    n_test = _split_size(n, test_fraction)
    n_val = 0 if folds else _split_size(n, val_fraction)
    if n - n_test - n_val < max(folds, 1):
        raise ManifestError(
            f"{n} case(s) in {dataset_dir} are too few for test {n_test}, validation {n_val}"
            + (f" and {folds} folds" if folds else " and at least one training case")
        )

    def relative(path: Path) -> str:
        return path.relative_to(dataset_dir).as_posix()

    def item(stem: str) -> dict:
        image, mask = cases[stem]
        label = [relative(m) for m in mask] if isinstance(mask, tuple) else relative(mask)
        return {"image": relative(image), "label": label}

    testing = [item(s) for s in order[:n_test]]
    validation = [item(s) for s in order[n_test : n_test + n_val]]
    training = [item(s) for s in order[n_test + n_val :]]
    if folds:
        for i, entry in enumerate(training):
            entry["fold"] = i % folds
    how = f"{folds}-fold cross-validation on the rest" if folds else f"validation fraction {val_fraction}"
    strata = f", stratified by {getattr(stratify, '__name__', stratify)} on file stems" if stratify else ""
    by_image = itemgetter("image")  # sorted splits keep manifests diff-friendly
    if structures is None:
        what = f"{n} image/mask pairs from {images}/ and {masks}/"
        label_info: dict = {"labels": dict(DEFAULT_LABELS if labels is None else labels)}
    else:
        what = (
            f"{n} images from {images}/, each with one mask per structure in {masks}/<structure>/ "
            f"({', '.join(structures)}) stacked as {MULTI_LABEL}"
        )
        label_info = {
            "label_format": MULTI_LABEL,
            "structures": list(structures),
            "labels": {str(i): s for i, s in enumerate(structures)},
        }
    return {
        "name": name or dataset_dir.resolve().name,
        "description": (
            f"{what}, paths relative to the dataset folder; "
            f"seed {seed}, test fraction {test_fraction}, {how}{strata}"
        ),
        "seed": seed,
        "tensorImageSize": "2D",
        **label_info,
        "numTraining": len(training),
        "numValidation": len(validation),
        "numTest": len(testing),
        "training": sorted(training, key=by_image),
        "validation": sorted(validation, key=by_image),
        "testing": sorted(testing, key=by_image),
    }
