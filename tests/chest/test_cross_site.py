"""The cross-site report: per-site figures, the quality-flag figures, and a small real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xray_seg.shared.errors import UserError
from xray_seg.studies.cross_site import Model, _one_pixel_cost, cross_site_report, summarise

REPO = Path(__file__).resolve().parents[2]


def _rows(dice: list[float], qc: list[float] | None = None, threshold: float = 0.5) -> list[dict]:
    rows = [{"case": f"c{i}.png", "dice_lung": str(d), "hd95_lung": str(10 * (1 - d))} for i, d in enumerate(dice)]
    for row, score in zip(rows, qc or []):
        row.update(qc_score=str(score), qc_flag=str(score < threshold))
    return rows


def test_summary_counts_and_quality_flag_figures() -> None:
    dice = [0.98, 0.97, 0.96, 0.89, 0.80, 0.30]
    qc = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1]  # flags: 0.96 (a false alarm), 0.80 and 0.30
    s = summarise(_rows(dice, qc))
    assert s["cases"] == 6 and s["min_dice"] == 0.30 and s["below_0.90"] == 3 and s["below_0.85"] == 2
    assert s["median_dice"] == pytest.approx((0.96 + 0.89) / 2)
    assert s["worst"][0] == (0.30, "c5.png")
    q = s["qc"]
    assert (q["bad_cases"], q["bad_flagged"], q["good_cases"], q["good_flagged"]) == (2, 2, 3, 1)
    assert q["auroc_below_0.85"] == pytest.approx(1.0)  # both bad cases have the lowest scores
    # below 0.90: risks of the 3 bad (0.4, 0.8, 0.9) vs the 3 good (0.1, 0.2, 0.7): 8 of 9 pairs ordered
    assert q["auroc_below_0.90"] == pytest.approx(8 / 9)
    assert summarise(_rows([0.99, 0.98], [0.9, 0.9]))["qc"]["auroc_below_0.85"] is None  # no bad case: undefined
    assert "qc" not in summarise(_rows([0.9]))


def test_summary_of_outline_offsets_per_region() -> None:
    rows = _rows([0.95, 0.94, 0.93])
    for row, medial in zip(rows, ["2.5", "1.5", "-1.0"]):
        row.update(offset_medial_px=medial, offset_lateral_px="-1.0", offset_apex_px="nan", offset_base_px="0.5")
    o = summarise(rows)["boundary_offset_px"]
    assert o["medial"] == {"mean": pytest.approx(1.0), "cases_outside": 2, "cases": 3}
    assert o["lateral"]["cases_outside"] == 0 and o["base"]["cases_outside"] == 3
    assert o["apex"] == {"mean": None, "cases_outside": 0, "cases": 0}  # no outline there: left out, not zero
    assert "boundary_offset_px" not in summarise(_rows([0.9]))


def test_models_are_parsed_and_missing_checkpoints_refused(tmp_path: Path) -> None:
    m = Model.parse("a=runs/x:y/model.pt:montgomery+jsrt")
    assert m == Model("a", Path("runs/x:y/model.pt"), ("montgomery", "jsrt"))
    with pytest.raises(UserError, match="expected NAME=CHECKPOINT:SITE"):
        Model.parse("just_a_path.pt")
    with pytest.raises(UserError, match="no checkpoint for model gone.*Train the leave-one-site-out"):
        cross_site_report([Model("gone", tmp_path / "none.pt", ("jsrt",))], tmp_path / "out")


def test_report_on_two_small_sites(tmp_path: Path, data_dir: Path) -> None:
    """The shipped model declared as trained on Montgomery only: its test split there, every JSRT case of the
    manifest (what the report does for an unseen site; the figures themselves are not the point here)."""
    full = json.loads((REPO / "data_manifests" / "cxr_lungs_sites.json").read_text())
    pick = {site: [i for i in full["testing"] if i["site"] == site][:2] for site in full["sites"]}
    small = dict(full, training=pick["jsrt"][:1], validation=[], testing=pick["montgomery"] + pick["jsrt"][1:])
    manifest = tmp_path / "small.json"
    manifest.write_text(json.dumps(small))
    model = Model("shipped", REPO / "bundle" / "cxr_lungs" / "models" / "model.pt", ("montgomery",))
    report = cross_site_report([model], tmp_path / "out", data_dir, command="test", manifest=manifest)
    by_site = {e["site"]: e for e in report["evaluations"]}
    assert by_site["montgomery"]["splits"] == ["testing"] and by_site["montgomery"]["summary"]["cases"] == 2
    assert by_site["jsrt"]["splits"] == ["training", "validation", "testing"]
    assert by_site["jsrt"]["summary"]["cases"] == 2  # every JSRT case of the manifest, whatever its split
    assert by_site["montgomery"]["summary"]["mean_dice"] > 0.9
    for name in ("cross_site.json", "cross_site.md", "worst_shipped_on_jsrt.png", "worst_shipped_on_montgomery.png"):
        assert (tmp_path / "out" / name).is_file()
    table = (tmp_path / "out" / "cross_site.md").read_text()
    assert "| shipped | montgomery | jsrt (every case, unseen site) | 2 |" in table
    offsets = by_site["montgomery"]["summary"]["boundary_offset_px"]
    assert offsets["medial"]["cases"] == 2 and abs(offsets["medial"]["mean"]) < 5  # a good model: within a few px
    assert "| shipped | jsrt (every case, unseen site) | " in table.split("Where the outlines differ")[1]
    assert set(report["one_pixel_offset_dice_cost"]) == {"montgomery", "jsrt"}
    assert all(0.005 < c < 0.03 for c in report["one_pixel_offset_dice_cost"].values())  # lungs at 512 px: ~0.01


def test_one_pixel_cost_per_site_and_none_without_test_cases(tmp_path: Path, data_dir: Path) -> None:
    full = json.loads((REPO / "data_manifests" / "cxr_lungs_sites.json").read_text())
    montgomery = [i for i in full["testing"] if i["site"] == "montgomery"][:2]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(dict(full, testing=montgomery)))
    assert 0.005 < _one_pixel_cost("montgomery", data_dir, manifest) < 0.03
    assert _one_pixel_cost("jsrt", data_dir, manifest) is None  # no JSRT test case in this manifest
