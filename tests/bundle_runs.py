"""Run a bundle config the way a user does, through ``python -m monai.bundle run``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from xray_seg.shared.bundles import bundle_command


def run_bundle(bundle: Path, config_files: list[str], expect: int = 0, **overrides: object) -> subprocess.CompletedProcess:
    """Run ``config_files`` of ``bundle`` with overrides; assert the exit status, showing the log tail if not."""
    result = subprocess.run(bundle_command(config_files, bundle=bundle, **overrides), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result
