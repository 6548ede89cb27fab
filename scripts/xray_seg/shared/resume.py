"""Find the checkpoint a killed training run resumes from, and prune the older ones."""

from __future__ import annotations

import re
from pathlib import Path

# MONAI's CheckpointSaver names interval checkpoints "<prefix>_checkpoint_epoch=<N>.pt".
_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str, prefix: str = "resume") -> str | None:
    """Path of the newest ``<prefix>_checkpoint_epoch=N.pt`` in ``ckpt_dir``, or None."""
    found = _checkpoints(ckpt_dir, prefix)
    return str(found[-1][1]) if found else None


def _checkpoints(ckpt_dir: str, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for path in Path(ckpt_dir).glob(f"{prefix}_checkpoint_epoch=*.pt"):
        match = _EPOCH.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


class PruneOlderCheckpoints:
    """After each epoch, delete every resume checkpoint but the newest.

    MONAI's CheckpointSaver (``n_saved=1``) only prunes the files of its own run;
    after a resume, the file the run started from would stay forever. Attach after
    the saver, so the new checkpoint exists before the old ones go.
    """

    def __init__(self, ckpt_dir: str, prefix: str = "resume") -> None:
        self.ckpt_dir, self.prefix = ckpt_dir, prefix

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self())

    def __call__(self) -> None:
        for _, path in self._older():
            path.unlink(missing_ok=True)

    def _older(self) -> list[tuple[int, Path]]:
        return _checkpoints(self.ckpt_dir, self.prefix)[:-1]
