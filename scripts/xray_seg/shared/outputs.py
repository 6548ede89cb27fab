"""Output destinations: checked before any work, cleaned of a killed run's debris,
and a result set published all at once.

Check: ``check_output_dir`` / ``check_output_file`` refuse, with a message naming the
path, a destination that is an existing file where a folder is wanted (or the
reverse), that lies under a file, or whose nearest existing folder is not writable.
They create nothing, so a refused run leaves no trace.

Debris: our writers use hidden temporary names beside the output
(``xray_seg.shared.atomic.atomic_path``: ``.<name>.<8 random>.partial<suffix>``;
``xray_seg.tomography.volume_io.SlabWriter``: the same, a ``.partial`` folder or a
``.partial.raw`` memmap). A SIGKILL skips every ``finally``, so those files stay.
``clean_stale_temporaries`` removes them at the start of the next run into the same
folder. Only names of exactly that pattern are touched. One run per output folder at
a time: a second, concurrent run would delete the first one's temporary files.

Publishing: ``publish_folder`` moves the files of a finished staging folder into the
output folder. Several directory entries cannot appear in one atomic step, so the
commit point is one rename: ``OUT/.partial`` (still being written) becomes
``OUT/.publishing`` (complete). Files are then moved one by one (milliseconds, no
computation). A run killed in between is rolled forward by ``finish_publishing`` at
the start of the next run. What a reader sees: no ``<stem>_seg.png`` of a run until
all of its inputs were segmented; afterwards the whole set, except in the window of
a kill during the moves, which ``OUT/.publishing`` marks until the next run
completes it. A reader that must never see a partial set checks that
``OUT/.publishing`` does not exist.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from xray_seg.shared.errors import UserError

logger = logging.getLogger(__name__)

# tempfile.mkstemp/mkdtemp names: prefix + 8 characters of [a-z0-9_] + suffix.
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.partial(\.[A-Za-z0-9.]+)?$")
STAGING_NAME = ".partial"
PUBLISHING_NAME = ".publishing"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path, if it can be (or already is) a writable folder; else UserError naming it.

    Nothing is created: call it before any work, create the folder when writing.
    """
    path = Path(path)
    existing = _nearest_existing(path.absolute())
    if existing == path.absolute() and not path.is_dir():
        raise UserError(f"{path}: output folder exists and is not a folder")
    if not existing.is_dir():
        raise UserError(f"{path}: cannot create the output folder: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "output folder" if existing == path.absolute() else f"folder {existing}, where the output folder would be created,"
        raise UserError(f"{path}: {what} is not writable")
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, if a file can be written there (atomically, by renaming); else UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: output file exists and is a folder")
    if path.name in ("", ".", ".."):
        raise UserError(f"{path}: not a file name")
    parent = path.absolute().parent
    if os.path.lexists(parent) and not parent.is_dir():
        raise UserError(f"{path}: cannot write the output file: {parent} is a file, not a folder")
    try:
        check_output_dir(parent)
    except UserError as err:
        raise UserError(f"{path}: cannot write the output file: {err}") from None
    return path


def clean_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed runs left in ``output_dir``; those removed."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if not (TEMPORARY_NAME.match(entry.name) or entry.name == STAGING_NAME):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


def finish_publishing(output_dir: str | os.PathLike) -> int:
    """Move what a committed but interrupted publish left in ``output_dir/.publishing``; files moved."""
    committed = Path(output_dir) / PUBLISHING_NAME
    if not committed.is_dir():
        return 0
    moved = 0
    for entry in sorted(committed.iterdir()):
        _replace(entry, Path(output_dir) / entry.name)
        moved += 1
    committed.rmdir()
    return moved


def _replace(entry: Path, target: Path) -> None:
    """``os.replace``, also for a folder (a volume's folder of slices) over an existing one,
    which os.replace refuses when it is not empty: the old one is first renamed to a
    temporary name (removed by ``clean_stale_temporaries`` should a kill come between)."""
    if entry.is_dir() and target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        os.replace(target, old)
        os.replace(entry, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(entry, target)


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """At the start of a run: finish an interrupted publish, remove stale temporaries."""
    folder = check_output_dir(output_dir)
    if finish_publishing(folder):
        logger.warning("completed the publishing of an interrupted earlier run in %s", folder)
    clean_stale_temporaries(folder)
    return folder


def publish_folder(staging: str | os.PathLike, output_dir: str | os.PathLike) -> int:
    """Publish every file of the finished folder ``staging`` (inside ``output_dir``); files moved.

    See the module docstring for what a reader sees.
    """
    staging, folder = Path(staging), Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    finish_publishing(folder)  # an earlier run's committed set goes first, as it would have
    committed = folder / PUBLISHING_NAME
    os.replace(staging, committed)  # the commit point: one rename
    return finish_publishing(folder)
