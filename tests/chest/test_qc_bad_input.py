"""Bad input through the bundles' own inference with the shipped models: nothing crashes,
and every such image gets qc_flag true with a reason in qc.csv.

Inputs: a blank image, a picture of text, an inverted real radiograph (255 - a
Montgomery test image) and a lateral-view proxy. The data hold no lateral view; the
proxy is the image-left half of a Montgomery test image (one lung and the spine,
what a frontal model sees of a lateral view: a single lung field, no second side).
The two real-image cases need the data folder and are skipped without it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from bundle_runs import run_bundle_in_process
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundle"
SYNTHETIC = ("blank", "text")
FROM_DATA = ("inverted", "lateral_proxy")


def _text_picture(path: Path) -> None:
    picture = Image.new("L", (480, 360), 235)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=22)
    for i in range(12):
        draw.text((20, 15 + 28 * i), f"Line {i}: the quick brown fox jumps over the lazy dog", fill=20, font=font)
    picture.save(path)


def _inputs(folder: Path, data_dir: Path | None) -> None:
    Image.fromarray(np.zeros((300, 240), np.uint8)).save(folder / "blank.png")
    _text_picture(folder / "text.png")
    if data_dir is None:
        return
    case = json.loads((REPO / "data_manifests" / "montgomery.json").read_text())["testing"][0]
    with Image.open(data_dir / "montgomery" / case["image"]) as im:
        radiograph = np.asarray(im.convert("L"))
    Image.fromarray(255 - radiograph).save(folder / "inverted.png")
    Image.fromarray(radiograph[:, : radiograph.shape[1] // 2].copy()).save(folder / "lateral_proxy.png")


@pytest.fixture(scope="module", params=["cxr_lungs", "cxr_anatomy"])
def qc_rows(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    bundle = BUNDLES / request.param
    if not (bundle / "models" / "model.pt").is_file():
        pytest.skip(f"no shipped model in {bundle / 'models'}")
    try:
        data_dir = request.getfixturevalue("data_dir")
    except pytest.skip.Exception:
        data_dir = None
    inputs, out = tmp_path_factory.mktemp("bad_in"), tmp_path_factory.mktemp("bad_out") / "out"
    _inputs(inputs, data_dir)
    run_bundle_in_process(bundle, ["inference.yaml"], dataset_dir=inputs, output_dir=out,
                          device="$torch.device('cpu')")
    with open(out / "qc.csv", newline="") as f:
        rows = {row["stem"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(p.stem for p in inputs.iterdir())  # one row per input, masks written
    assert all((out / f"{stem}_seg.png").is_file() for stem in rows)
    return rows


@pytest.mark.parametrize("case", SYNTHETIC)
def test_synthetic_bad_input_is_flagged_with_a_reason(qc_rows: dict[str, dict], case: str) -> None:
    row = qc_rows[case]
    assert row["qc_flag"] == "true" and row["reasons"], row
    assert 0 <= float(row["qc_score"]) <= 0.5


@pytest.mark.real_data
@pytest.mark.parametrize("case", FROM_DATA)
def test_real_bad_input_is_flagged_with_a_reason(qc_rows: dict[str, dict], case: str) -> None:
    if case not in qc_rows:
        pytest.skip("needs a Montgomery image from the data folder (XRAY_DATA_DIR)")
    row = qc_rows[case]
    assert row["qc_flag"] == "true" and row["reasons"], row
    assert 0 <= float(row["qc_score"]) <= 0.5
