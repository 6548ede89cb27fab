"""The MONAI Label virtual environment, ``.venv-label/`` beside the checkout.

Why a separate environment: ``monailabel`` imports torchvision, and PyPI's torchvision
does not import beside the CPU torch 2.13.0 wheel of the main environment; torch 2.14.1
with torchvision 0.29.1 works (a CUDA build, which also runs on the CPU). ``monailabel``
also requires ``sam2``, a source build that pulls another CUDA torch, so it is installed
with ``--no-deps`` and its other dependencies are listed in ``requirements.txt``
(with ``pydicom<3``, ``dicomweb-client<0.60``, ``pynetdicom<3``: ``pydicom-seg`` breaks with
pydicom 3; numpy stays below 2). The project itself goes in editable, without its
dependencies (``requirements.txt`` lists those that fit the pins).

``build()`` does nothing when the environment is already built from the same
``requirements.txt`` (a marker file records its digest).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

from xray_seg.shared.paths import REPO

VENV = REPO / ".venv-label"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
MARKER = "xray-seg-label.json"
# Installed on its own, with --no-deps (see the module docstring).
NO_DEPS = ("monailabel",)


def python_of(venv_dir: str | os.PathLike = VENV) -> Path:
    """The interpreter of a virtual environment (POSIX and Windows layouts)."""
    venv_dir = Path(venv_dir)
    posix = venv_dir / "bin" / "python"
    return posix if posix.exists() or os.name != "nt" else venv_dir / "Scripts" / "python.exe"


def requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def is_built(venv_dir: str | os.PathLike = VENV) -> bool:
    """True when ``venv_dir`` was built completely from the current ``requirements.txt``."""
    marker = Path(venv_dir) / MARKER
    try:
        return json.loads(marker.read_text()).get("requirements") == requirements_digest() and python_of(venv_dir).exists()
    except (OSError, ValueError):
        return False


def _split_requirements() -> tuple[list[str], list[str]]:
    """(requirements installed with their dependencies, those installed with --no-deps)."""
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    lines = [line for line in lines if line]
    name = lambda req: req.split("=")[0].split("<")[0].split(">")[0].strip().lower()  # noqa: E731
    return [r for r in lines if name(r) not in NO_DEPS], [r for r in lines if name(r) in NO_DEPS]


def _pip(python: Path, *args: str, quiet: bool) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *(["--quiet"] if quiet else []), *args]
    print("+", " ".join(cmd[1:]), flush=True)
    # Not the caller's PYTHONPATH: pip would count packages found there as installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(cmd, check=True, env=env)


def build(venv_dir: str | os.PathLike = VENV, quiet: bool = True, force: bool = False) -> Path:
    """Build the MONAI Label environment at ``venv_dir`` unless it is already built; its python.

    A build that fails half-way leaves no marker, so the next call starts it over.
    """
    venv_dir = Path(venv_dir)
    if is_built(venv_dir) and not force:
        return python_of(venv_dir)
    started = time.monotonic()
    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    python = python_of(venv_dir)
    with_deps, no_deps = _split_requirements()
    # torch first, on its own, so that the resolver never picks another build for it.
    torch_pins = [r for r in with_deps if r.startswith(("torch==", "torchvision=="))]
    _pip(python, *torch_pins, quiet=quiet)
    _pip(python, *with_deps, quiet=quiet)
    _pip(python, "--no-deps", *no_deps, quiet=quiet)
    _pip(python, "--no-deps", "--no-build-isolation", "-e", str(REPO), quiet=quiet)
    marker = {"requirements": requirements_digest(), "build_seconds": round(time.monotonic() - started),
              "python": sys.version.split()[0]}
    (venv_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return python
