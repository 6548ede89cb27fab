"""Multi-site manifests: combining per-site manifests, site filters, and the site augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xray_seg.chest.augment import RandCollimationd
from xray_seg.chest.sites import SitePart, combine_sites
from xray_seg.cli.main import main as cli
from xray_seg.shared.splits import ManifestError, load_split

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
PARTS = [
    SitePart("montgomery", MANIFESTS / "montgomery.json", "montgomery"),
    SitePart("jsrt", MANIFESTS / "jsrt_scr.json", "jsrt_scr", ("right_lung", "left_lung")),
]


def test_committed_multisite_manifest_is_the_combination_of_the_site_manifests() -> None:
    committed = json.loads((MANIFESTS / "cxr_lungs_sites.json").read_text())
    fresh = combine_sites(PARTS, name="cxr_lungs_sites")
    # The description names the manifests by file name only, so it does not depend on the cwd.
    assert fresh == committed


def test_sites_keep_their_own_splits_and_targets() -> None:
    combined = combine_sites(PARTS)
    for part in PARTS:
        single = json.loads(part.manifest.read_text())
        for split in ("training", "validation", "testing"):
            mine = [i for i in combined[split] if i["site"] == part.site]
            assert sorted(i["image"] for i in mine) == sorted(f"{part.folder}/{i['image']}" for i in single[split])
    jsrt = next(i for i in combined["testing"] if i["site"] == "jsrt")
    assert jsrt["label"] == [jsrt["image"].replace("images/", "masks/right_lung/"),
                             jsrt["image"].replace("images/", "masks/left_lung/")]
    assert combined["numTraining"] + combined["numValidation"] + combined["numTest"] == 110 + 192


@pytest.mark.parametrize("text, problem", [
    ("montgomery", "expected SITE=MANIFEST:FOLDER"),
    ("m=only_a_manifest.json", "expected SITE=MANIFEST:FOLDER"),
])
def test_bad_site_parts_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ManifestError, match=problem):
        SitePart.parse(text)


def test_structures_must_be_named_for_multi_label_and_exist() -> None:
    with pytest.raises(ManifestError, match="name the structures"):
        combine_sites([SitePart("jsrt", MANIFESTS / "jsrt_scr.json", "jsrt_scr")])
    with pytest.raises(ManifestError, match="no structure spleen"):
        combine_sites([SitePart("jsrt", MANIFESTS / "jsrt_scr.json", "jsrt_scr", ("spleen",))])
    with pytest.raises(ManifestError, match="site is named twice"):
        combine_sites([PARTS[0], PARTS[0]])


def _tiny_site_data(root: Path) -> Path:
    """Two sites whose folder names equal their site names (MONAI would take those strings for paths)."""
    for site in ("a", "b"):
        for i in range(3):
            for folder in ("images", "masks"):
                path = root / site / folder / f"{site}{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((20, 20), 255 * (folder == "masks"), np.uint8)).save(path)
    manifest = {
        "sites": ["a", "b"],
        "training": [{"image": f"{s}/images/{s}{i}.png", "label": f"{s}/masks/{s}{i}.png", "site": s}
                     for s in ("a", "b") for i in range(2)],
        "testing": [{"image": f"{s}/images/{s}2.png", "label": f"{s}/masks/{s}2.png", "site": s} for s in ("a", "b")],
    }
    path = root / "sites.json"
    path.write_text(json.dumps(manifest))
    return path


def test_load_split_filters_by_site_and_keeps_site_names(tmp_path: Path) -> None:
    manifest = _tiny_site_data(tmp_path)
    items = load_split(manifest, tmp_path, "training", sites=["a"])
    assert [Path(i["image"]).name for i in items] == ["a0.png", "a1.png"]
    assert {i["site"] for i in items} == {"a"}  # not joined onto the data folder like a path
    every_b = load_split(manifest, tmp_path, ["training", "testing"], sites=["b"])
    assert [Path(i["image"]).name for i in every_b] == ["b0.png", "b1.png", "b2.png"]
    with pytest.raises(ValueError, match="has no site 'c'; its sites: a, b"):
        load_split(manifest, tmp_path, "training", sites=["c"])


def test_sites_verb_writes_the_manifest_and_refuses_bad_parts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.json"
    parts = [f"{p.site}={p.manifest}:{p.folder}" + (":" + "+".join(p.structures) if p.structures else "") for p in PARTS]
    assert cli(["manifest", "sites", "--output_file", str(out), *parts]) == 0
    assert json.loads(out.read_text())["sites"] == ["montgomery", "jsrt"]
    assert cli(["manifest", "sites", "--output_file", str(tmp_path / "n.json"), f"jsrt={PARTS[1].manifest}:jsrt_scr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("ERROR:") and "name the structures" in err[0]
    assert not (tmp_path / "n.json").exists()


def test_collimation_bands_sit_on_the_edges_and_clear_the_label() -> None:
    image = torch.full((1, 64, 48), 0.5)
    label = torch.ones((1, 64, 48))
    t = RandCollimationd(prob=1.0, max_fraction=0.2)
    t.set_random_state(3)
    seen_band = False
    for _ in range(20):
        out = t({"image": image, "label": label})
        changed = out["image"][0] != 0.5
        assert torch.equal(changed, out["label"][0] == 0)  # label cleared exactly under the bands
        if changed.any():
            seen_band = True
            rows, cols = torch.nonzero(changed, as_tuple=True)
            # every hidden pixel lies in a band touching an edge
            assert all(min(r, 63 - r) < 0.2 * 64 or min(c, 47 - c) < 0.2 * 48 for r, c in zip(rows.tolist(), cols.tolist()))
            assert set(out["image"][0][changed].unique().tolist()) <= {0.0, 1.0}
    assert seen_band
    assert torch.equal(image, torch.full((1, 64, 48), 0.5))  # inputs untouched
