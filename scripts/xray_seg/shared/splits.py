"""Data manifests (MONAI datalists) as the bundle configs read them: one split,
with paths joined onto the dataset folder given at run time.

Shared by the 2D manifests (``xray_seg.chest.manifest``) and the slab/volume
manifests (``xray_seg.tomography.slab_manifest``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

SPLITS = ("training", "validation", "testing")


class EmptySplitError(ValueError):
    """The split (after the fold and site filters) holds no item."""


class ManifestError(ValueError):
    """The dataset or the split parameters cannot make a manifest; the message lists every problem."""


def _read_manifest(manifest_path: Path, keys: Sequence[str]) -> dict:
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ValueError(f"manifest {manifest_path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"manifest {manifest_path} cannot be read: {e}") from e
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {manifest_path} is not a datalist: expected a JSON object")
    for key in keys:
        entries = manifest.get(key)
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("image"), str) and _is_label(e.get("label")) for e in entries
        ):
            raise ValueError(
                f"manifest {manifest_path} is not a datalist: {key!r} must be a list of {{image, label}} "
                "with label a path or a non-empty list of paths"
            )
    return manifest


def _is_label(label: object) -> bool:
    """A mask path, or a list of structure mask paths (multi-label manifests)."""
    if isinstance(label, list):
        return bool(label) and all(isinstance(p, str) for p in label)
    return isinstance(label, str)


def _check_files_exist(items: list[dict], split: str, manifest_path: Path, dataset_dir: Path) -> None:
    paths = [
        p for item in items for k in ("image", "label")
        for p in (item[k] if isinstance(item[k], list) else [item[k]])
    ]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        shown = "\n".join(f"  {p}" for p in missing[:5])
        raise ValueError(
            f"{len(missing)} of {len(paths)} files of split {split!r} in manifest {manifest_path} "
            f"are missing under {dataset_dir}, e.g.:\n{shown}\n"
            "Manifest paths are relative to the dataset folder: is --dataset_dir right?"
        )


def load_split(
    manifest_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    split: str | Sequence[str],
    fold: int | None = None,
    sites: Sequence[str] | None = None,
) -> list[dict]:
    """Items of ``split`` with paths joined onto ``dataset_dir``, for bundle configs.

    With ``fold`` (k-fold manifests), "training" is every training item outside that
    fold and "validation" the items inside it; "testing" ignores ``fold``. A list of
    splits gives their items in turn (e.g. every case of a site for a cross-site test).
    With ``sites`` (multi-site manifests, ``xray_seg.chest.sites``), only the items of
    those sites. Raises ValueError for a bad manifest or split, an unknown site, an
    empty result, or missing files.
    """
    if not isinstance(split, str):  # several splits: one of them may be empty, not all
        items = []
        for name in split:
            try:
                items += load_split(manifest_path, dataset_dir, name, fold, sites)
            except EmptySplitError:
                continue
        if not items:
            raise EmptySplitError(f"manifest {manifest_path}: splits {list(split)} are empty")
        return items
    from monai.data import load_decathlon_datalist  # takes seconds to import; the CLI does not need it

    manifest_path, dataset_dir = Path(manifest_path), Path(dataset_dir).absolute()
    if split not in SPLITS:
        raise ValueError(f"manifest {manifest_path}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    by_fold = fold is not None and split != "testing"
    key = "training" if by_fold else split
    manifest = _read_manifest(manifest_path, [key])
    if not dataset_dir.is_dir():
        raise ValueError(f"dataset folder {dataset_dir} does not exist: is --dataset_dir right?")
    items = load_decathlon_datalist(manifest_path, is_segmentation=True, data_list_key=key, base_dir=dataset_dir)
    # MONAI joins every string that names an existing path onto base_dir, so a site
    # called like its folder ("montgomery") would become a path: keep the manifest's own.
    for item, raw in zip(items, manifest[key]):
        if "site" in raw:
            item["site"] = raw["site"]
    if by_fold:
        manifest_folds = sorted({e["fold"] for e in manifest["training"] if "fold" in e})
        if not manifest_folds:
            raise ValueError(f"manifest {manifest_path} has no folds; build it with --folds K or load it with fold=None")
        if fold not in manifest_folds:
            raise ValueError(f"manifest {manifest_path} has folds {manifest_folds}, not {fold}")
        items = [item for item in items if (item.get("fold") == fold) == (split == "validation")]
    if sites is not None:
        items = _of_sites(items, manifest, manifest_path, [sites] if isinstance(sites, str) else list(sites))
    if not items:
        k_fold = split == "validation" and any("fold" in e for e in manifest.get("training", []))
        hint = "; it is a k-fold manifest: pass a fold" if k_fold else ""
        raise EmptySplitError(f"manifest {manifest_path}: split {split!r} is empty{hint}")
    _check_files_exist(items, split, manifest_path, dataset_dir)
    return items


def _of_sites(items: list[dict], manifest: dict, manifest_path: Path, sites: list[str]) -> list[dict]:
    known = manifest.get("sites")
    if not known:
        raise ValueError(f"manifest {manifest_path} has no sites; build one with `xray-seg manifest sites`")
    unknown = [s for s in sites if s not in known]
    if unknown:
        raise ValueError(f"manifest {manifest_path} has no site {', '.join(map(repr, unknown))}; its sites: {', '.join(known)}")
    return [item for item in items if item.get("site") in sites]


def write_manifest(output_file: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest`` as JSON to ``output_file`` atomically (a reader never sees half of it).

    Call ``xray_seg.shared.outputs.check_output_file(output_file)`` before building the
    manifest, so a bad destination is refused before the dataset is read; it is checked
    here again in case it changed meanwhile. Raises UserError naming the file.
    """
    from xray_seg.shared.atomic import write_text
    from xray_seg.shared.outputs import check_output_file

    path = check_output_file(output_file)
    write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path
