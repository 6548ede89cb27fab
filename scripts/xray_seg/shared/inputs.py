"""The data entry points that bundle configs call.

Each turns the project's own input errors into one ``ERROR:`` line and exit
status 2 (``xray_seg.shared.errors``), before any output is written. The volume
entry points are in ``xray_seg.tomography.inputs``.
"""

from __future__ import annotations

from pathlib import Path

from xray_seg.shared.image_checks import check_readable, image_stem, list_image_files
from xray_seg.shared.errors import or_exit
from xray_seg.shared.splits import load_split

def cases(manifest: str, dataset_dir: str, split: str, fold: int | None = None) -> list[dict]:
    """Items of one split of a data manifest, with paths under ``dataset_dir``."""
    return or_exit(lambda: load_split(manifest, dataset_dir, split, fold))


def images_in(folder: str) -> list[dict]:
    """Every supported image in ``folder`` as ``{"image": path}``, all decoded once up front
    so that an unreadable file stops the run before any mask is written."""

    def scan() -> list[dict]:
        paths = list_image_files(folder)
        _check_unique_stems(paths)
        check_readable(paths)
        return [{"image": str(p)} for p in paths]

    return or_exit(scan)


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
