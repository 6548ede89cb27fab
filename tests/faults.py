"""Generators of damaged, odd and hostile inputs, and the checks every refusal must pass.

Shared by tests/shared/test_fault_injection.py (2D, outputs, manifests, checkpoints)
and tests/tomography/test_volume_faults.py (3D). Everything is generated: no real data.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Callable

import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image


def tree(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden ones too), relative, sorted; [] when it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def grey(size: tuple[int, int] = (64, 64), seed: int = 0, dtype=np.uint8) -> np.ndarray:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(info.min, info.max, size=size, endpoint=True).astype(dtype)


def write_png(path: Path, array: np.ndarray | None = None, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey() if array is None else array, mode=mode).save(path)
    return path


def write_nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels (with no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def break_gzip_crc(path: Path) -> Path:
    """Damage only the CRC-32 in a gzip file's trailer: every byte still decompresses."""
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def broken_link(path: Path) -> Path:
    os.symlink(path.parent / "missing-target.png", path)
    return path


def link_loop(path: Path) -> Path:
    os.symlink(path.name, path)  # points to itself
    return path


def multipage_tiff(path: Path, pages: int = 3) -> Path:
    tifffile.imwrite(path, np.stack([grey(seed=i) for i in range(pages)]), photometric="minisblack")
    return path


def float_tiff(path: Path, bad: float) -> Path:
    array = grey().astype(np.float32)
    array[10:12, 10:12] = bad
    tifffile.imwrite(path, array)
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR:")]


def assert_refused(stderr: str, *fragments: str) -> str:
    """Exactly one ``ERROR:`` line, holding every fragment (the file and the problem); no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def expect_exit(call: Callable[[], object], capsys: pytest.CaptureFixture, *fragments: str) -> str:
    """``call()`` must exit with status 2 and one ``ERROR:`` line holding ``fragments``."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    return assert_refused(capsys.readouterr().err, *fragments)


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 120.0) -> float:
    """Start ``cmd``, SIGKILL it as soon as ``ready()``; the seconds it ran. Fails if it ends first."""
    start = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"the run ended (status {process.returncode}) before it could be killed: "
                            f"{process.stderr.read()[-2000:]}")
            if time.monotonic() - start > timeout:
                pytest.fail("the run never reached the point to kill it at")
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return time.monotonic() - start
