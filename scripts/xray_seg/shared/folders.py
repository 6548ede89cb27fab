"""List an input folder's entries, refusing broken symbolic links instead of skipping them.

``Path.is_file()`` is False for a link whose target is missing or that points to
itself (a loop), so a plain listing drops such an input without a word; the user
would get one output fewer and no reason.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from xray_seg.shared.errors import UserError


def link_problem(path: Path) -> str | None:
    """Why ``path`` (a symbolic link) cannot be followed, or None when it can."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken symbolic link to {os.readlink(path)} ({err.strerror})"
    return None


def visible_entries(folder: str | os.PathLike, error: type[ValueError] = UserError) -> list[Path]:
    """The sorted entries of ``folder`` that are not hidden (``.name``: our temporary files).

    Raises ``error`` naming the link when a visible entry is a broken link or a link loop.
    """
    entries = sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))
    problems = [f"{p}: {problem}" for p in entries if (problem := link_problem(p))]
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise error(problems[0] + more)
    return entries
