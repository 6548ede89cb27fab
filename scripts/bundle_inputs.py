"""The data entry points that bundle configs call.

Configs run inside ``python -m monai.bundle run``, which would bury a bad-input
error under a page of config-parser traceback. These wrappers turn the project's
own input errors into one clear line on stderr and exit status 2, before any
output is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from scripts.imageio_checks import check_readable, image_stem, list_image_files
from scripts.manifest import load_split

T = TypeVar("T")


def _or_exit(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def cases(manifest: str, dataset_dir: str, split: str, fold: int | None = None) -> list[dict]:
    """Items of one split of a data manifest, with paths under ``dataset_dir``."""
    return _or_exit(lambda: load_split(manifest, dataset_dir, split, fold))


def images_in(folder: str) -> list[dict]:
    """Every supported image in ``folder`` as ``{"image": path}``, all decoded once up front
    so that an unreadable file stops the run before any mask is written."""

    def scan() -> list[dict]:
        paths = list_image_files(folder)
        _check_unique_stems(paths)
        check_readable(paths)
        return [{"image": str(p)} for p in paths]

    return _or_exit(scan)


def _check_unique_stems(paths: list[Path]) -> None:
    """Outputs are named by input stem: two inputs with one stem would overwrite each other."""
    by_stem: dict[str, list[str]] = {}
    for path in paths:
        by_stem.setdefault(image_stem(path), []).append(path.name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(", ".join(names) for names in clashes)
        raise ValueError(f"{paths[0].parent}: inputs share a file stem, so their outputs would collide: {listed}")


def staging_dir(output_dir: str) -> str:
    return str(Path(output_dir) / ".partial")


def volume_cases(manifest: str, dataset_dir: str, split: str, label_values: list[int] | None = None) -> list[dict]:
    """Items of one split of a volume or slab manifest, every volume opened and
    checked up front: readable, image and label of one shape, and, with
    ``label_values``, label voxels only of those values."""
    from scripts.volume_io import SlabReader, check_same_shape, read_volume  # 3D only

    def scan() -> list[dict]:
        items = load_split(manifest, dataset_dir, split)
        for item in items:
            with SlabReader(item["image"]) as image, SlabReader(item["label"]) as label:
                check_same_shape(image.meta, label.meta)
            if label_values is not None:
                slices = item.get("slices")
                values, _ = read_volume(item["label"], slices=None if slices is None else tuple(slices))
                unknown = sorted(set(np.unique(values).tolist()) - {int(v) for v in label_values})
                if unknown:
                    raise ValueError(f"label volume {item['label']} has values {unknown[:10]} "
                                     f"outside the expected {list(label_values)}")
        return items

    return _or_exit(scan)
