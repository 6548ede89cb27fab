"""Run ``xray-seg`` in this process, as the CLI tests do."""

from __future__ import annotations

import pytest

from xray_seg.cli.main import main


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``xray-seg ARGS`` run in this process."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
