"""Quiet, honest output: library notices filtered once, progress as a few log lines off a terminal."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest
from ignite.engine import Engine

from xray_seg.shared.progress import ProgressBar, on_terminal

EMIT = """
import logging, warnings
import xray_seg  # installs the filters, as every config's imports do
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
for module in ("monai.transforms.utility", "torch.serialization", "itk.support", "ignite.handlers"):
    warnings.warn_explicit("old API", DeprecationWarning, "lib.py", 1, module=module)
    warnings.warn_explicit("will change", FutureWarning, "lib.py", 1, module=module)
warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully.")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning(
    "nvImageCodec is not available; skipping pydicom decoder plugin registration.")
warnings.warn_explicit("our own old API", DeprecationWarning, "ours.py", 1, module="xray_seg.chest.transforms")
warnings.warn("a real problem", UserWarning)
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("another notice")
"""


def test_library_notices_are_filtered_and_ours_are_not() -> None:
    result = subprocess.run([sys.executable, "-W", "default", "-c", EMIT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "old API" not in err.replace("our own old API", "") and "will change" not in err
    assert "nvImageCodec" not in err
    assert "our own old API" in err and "a real problem" in err and "another notice" in err


def test_filters_are_installed_once() -> None:
    from xray_seg.shared.quiet import NVIMGCODEC_LOGGER, filter_library_warnings

    filter_library_warnings()  # importing xray_seg already called it
    filter_library_warnings()
    assert len(logging.getLogger(NVIMGCODEC_LOGGER).filters) == 1


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_engine(bar: ProgressBar, epochs: int = 2, length: int = 8) -> Engine:
    engine = Engine(lambda e, b: None)
    bar.attach(engine)
    engine.run(range(length), max_epochs=epochs)
    return engine


def test_progress_off_a_terminal_is_a_log_line_per_quarter(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    assert not on_terminal(stream)
    with caplog.at_level(logging.INFO, logger="xray_seg.progress"):
        run_engine(ProgressBar(stream=stream, every_percent=25), epochs=2, length=8)
    lines = [r.getMessage() for r in caplog.records if r.name == "xray_seg.progress"]
    assert lines[:4] == [f"Epoch [1/2]: {p}% ({n}/8 iterations)" for p, n in ((25, 2), (50, 4), (75, 6), (100, 8))]
    assert len(lines) == 8 and stream.getvalue() == ""  # no bar, no carriage returns


def test_progress_of_a_short_single_run(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="xray_seg.progress"):
        run_engine(ProgressBar(stream=io.StringIO(), every_percent=25), epochs=1, length=3)
    assert [r.getMessage() for r in caplog.records if r.name == "xray_seg.progress"] == [
        "Progress: 33% (1/3 iterations)", "Progress: 66% (2/3 iterations)", "Progress: 100% (3/3 iterations)",
    ]  # fmt: skip


def test_progress_on_a_terminal_is_ignites_bar(caplog: pytest.LogCaptureFixture) -> None:
    terminal = FakeTerminal()
    with caplog.at_level(logging.INFO, logger="xray_seg.progress"):
        run_engine(ProgressBar(stream=terminal, persist=True), epochs=1, length=4)
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue()
    assert not [r for r in caplog.records if r.name == "xray_seg.progress"]


def test_progress_rejects_a_bad_step() -> None:
    with pytest.raises(ValueError, match="every_percent"):
        ProgressBar(every_percent=0)
