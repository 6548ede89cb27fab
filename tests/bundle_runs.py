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


def run_bundle_in_process(bundle: Path, config_files: list[str], **overrides: object) -> None:
    """The same run inside the test process: no interpreter start-up (seconds on a loaded
    CPU); for successful runs whose output is checked, not their exit status or stderr."""
    from monai.bundle import run

    configs = [str(bundle / "configs" / name) for name in config_files]
    run(config_file=configs[0] if len(configs) == 1 else configs, bundle_root=str(bundle),
        meta_file=str(bundle / "configs" / "metadata.json"), **{k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})
