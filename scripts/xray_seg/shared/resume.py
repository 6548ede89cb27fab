"""Find the checkpoint a killed training run resumes from, and prune the older ones."""

from __future__ import annotations

import re
from pathlib import Path

# Resume checkpoints are named "<prefix>_checkpoint_epoch=<N>.pt" (xray_seg.shared.training).
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

    The saver keeps every file (``n_saved=None``): pruning here, after the new file has
    been written, means a kill never leaves the run without a checkpoint, and it also
    removes the file a resumed run started from, which the saver never knew. Attach
    after the saver.
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
