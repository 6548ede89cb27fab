"""Run folders: where a training run keeps its checkpoints, resume state, logs and reports.

A run lives in ``runs/<bundle>/<run_name>/`` (``run_name`` defaults to the start
time), never in a bundle's ``models/`` folder unless the user points ``ckpt_dir``
there. ``run.json`` in the folder records the settings the run started with, so a
resume with other settings (epochs, learning rate, network, data) is refused
instead of silently mixing two schedules. Evaluation finds the training curves of
a checkpoint through the run folder it sits in.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from xray_seg.shared.atomic import write_text
from xray_seg.shared.errors import UserError
from xray_seg.shared.paths import RUNS
from xray_seg.shared.reports import to_jsonable

RUN_FILE = "run.json"
LOGS = "logs"


def timestamp() -> str:
    """The default run name: the local start time, e.g. ``20261201-053012``; in a
    distributed run, rank 0's, so that every rank writes into the same folder."""
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(stamp, src=0)
    return stamp[0]


def bundle_name(bundle_root: str) -> str:
    return Path(bundle_root).resolve().name


def run_dir(bundle_root: str, run_name: str) -> str:
    """``runs/<bundle>/<run_name>`` in the repository, whatever the working directory."""
    if not run_name or Path(run_name).name != run_name:
        raise UserError(f"run name {run_name!r} must be a plain folder name (no '/'); use --run_dir for a path")
    return str(RUNS / bundle_name(bundle_root) / run_name)


def output_dir(bundle_root: str, what: str) -> str:
    """Default folder for a bundle's evaluation or inference outputs: ``runs/<bundle>/<what>``."""
    return str(RUNS / bundle_name(bundle_root) / what)


def run_folder_of(checkpoint: str) -> Path | None:
    """The run folder a checkpoint was trained in (the folder holding it and ``run.json``), or None."""
    folder = Path(checkpoint).resolve().parent
    return folder if (folder / RUN_FILE).is_file() else None


def logs_of(checkpoint: str) -> str | None:
    """TensorBoard logs of the run that produced ``checkpoint``, or None (e.g. a shipped model)."""
    folder = run_folder_of(checkpoint)
    return str(folder / LOGS) if folder is not None and (folder / LOGS).is_dir() else None


def eval_dir(checkpoint: str, bundle_root: str) -> str:
    """Where evaluating ``checkpoint`` writes by default: ``<its run folder>/eval``, else ``runs/<bundle>/eval``."""
    folder = run_folder_of(checkpoint)
    return str(folder / "eval") if folder is not None else output_dir(bundle_root, "eval")


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (a manifest): a changed data split counts as a changed setting."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings whose values differ, as ``name: was X, now Y``."""
    return [
        f"{key}: was {recorded.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]


def record_settings(folder: str, settings: dict[str, Any], resuming: bool, write: bool = True) -> None:
    """Write ``run.json`` for a new (or restarted) run; when ``resuming``, insist on the same settings.
    ``write=False``: only check (the ranks of a distributed run other than 0)."""
    path = Path(folder) / RUN_FILE
    current = to_jsonable(settings)
    if resuming and path.is_file():
        recorded = json.loads(path.read_text()).get("settings", {})
        differences = settings_mismatch(recorded, current)
        if differences:
            raise UserError(
                f"{folder}: this run folder holds a run started with other settings ({'; '.join(differences)}). "
                "Resume it with its own settings, start a new run (another --run_name), "
                "or start this one over with --resume false"
            )
        return
    if write:
        write_text(path, json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": current}, indent=2)
                   + "\n")
