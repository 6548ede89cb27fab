"""Find the checkpoint a killed training run resumes from."""

from __future__ import annotations

import re
from pathlib import Path

# MONAI's CheckpointSaver names interval checkpoints "<prefix>_checkpoint_epoch=<N>.pt".
_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str, prefix: str = "resume") -> str | None:
    """Path of the newest ``<prefix>_checkpoint_epoch=N.pt`` in ``ckpt_dir``, or None."""
    found = []
    for path in Path(ckpt_dir).glob(f"{prefix}_checkpoint_epoch=*.pt"):
        match = _EPOCH.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return str(max(found)[1]) if found else None
