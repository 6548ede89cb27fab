"""``xray-seg export``: the verb in front of xray_seg.shared.export (parity: tests/shared/test_export.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xray_seg.cli.main import main


def test_export_writes_a_torchscript_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lungs.ts"
    assert main(["export", "--bundle", "cxr_lungs", "--format", "torchscript", "--output_file", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    net = torch.jit.load(str(out))
    assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["lungs.ts"]  # no temporary file left


@pytest.mark.parametrize("args,message", [
    (["--bundle", "nope", "--format", "onnx"], "unknown bundle 'nope'"),
    (["--bundle", "cxr_lungs", "--format", "onnx", "--ckpt_path", "missing.pt"], "missing.pt"),
])
def test_export_refuses_bad_requests_with_one_error_line(args: list[str], message: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", *args, "--output_file", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and message in err and err.count("ERROR:") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())
