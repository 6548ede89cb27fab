"""Fixtures shared by the test modules.

The test folders mirror the package (shared, chest, tomography, synthetic, cli);
helpers that several of them use (bundle_runs, cli_runs, dicom_files, faults) sit beside this file,
which pytest puts on sys.path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every checkout has the real data at ../shared/data beside it (see its README).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder ($XRAY_DATA_DIR, else ../shared/data); skips the test when absent."""
    path = Path(os.environ.get("XRAY_DATA_DIR", DEFAULT_DATA_DIR))
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found: set XRAY_DATA_DIR to the shared data folder")
    return path
