"""How well does qc.csv's flag find bad masks? Bundle inference on a labelled set, then Dice vs flag.

    PYTHONPATH=scripts python -m xray_seg.studies.qc_check --bundle cxr_lungs --site jsrt_scr \
        --split all --output_file runs/qc_check/cxr_lungs_on_jsrt.json [--ckpt_path M] [--limit N]

Runs the bundle's own inference.yaml (post-processing and qc.csv as a user gets them)
on the images of a manifest split, scores each mask against its ground truth
(cxr_lungs: the union of the lung masks; cxr_anatomy: mean Dice over the five
structures, or on a lungs-only set the union of both predicted lungs) and prints and writes JSON with, per case, Dice, qc_score, qc_flag and
reasons, and in summary the share of bad masks (Dice < 0.85) flagged and of good
masks (Dice > 0.95) flagged -- the targets of issue 10 are >= 80 % and <= 10 %.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xray_seg.shared.atomic import write_text
from xray_seg.shared.paths import BUNDLES, DATA, REPO

BAD_DICE, GOOD_DICE = 0.85, 0.95


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run_inference(bundle: str, inputs: Path, output_dir: Path, ckpt_path: Path | None) -> None:
    from monai.bundle import ConfigWorkflow

    configs = BUNDLES / bundle / "configs"
    overrides = {"ckpt_path": str(ckpt_path)} if ckpt_path else {}
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.yaml"), meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"), workflow_type="infer", bundle_root=str(BUNDLES / bundle),
        dataset_dir=str(inputs), output_dir=str(output_dir), **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def case_dice(bundle: str, site_dir: Path, case: dict, out: Path) -> float:
    stem = Path(case["image"]).stem
    labels = case["label"] if isinstance(case["label"], list) else [case["label"]]
    truth = [_mask(site_dir / p) for p in labels]
    if bundle == "cxr_lungs":
        pred = np.asarray(Image.open(out / f"{stem}_seg.png")) == 1
        return dice(pred, truth[0] | truth[1] if len(truth) > 1 else truth[0])
    from xray_seg.chest.anatomy import STRUCTURES

    preds = [np.asarray(Image.open(out / f"{stem}_{s}.png")) > 0 for s in STRUCTURES]  # 0/1 masks
    if len(truth) == 1:  # a lungs-only set (Montgomery): both predicted lungs against its one mask
        return dice(preds[0] | preds[1], truth[0])
    return float(np.mean([dice(p, t) for p, t in zip(preds, truth)]))


def summarise(rows: list[dict]) -> dict:
    bad = [r for r in rows if r["dice"] < BAD_DICE]
    good = [r for r in rows if r["dice"] > GOOD_DICE]
    flagged = [r for r in rows if r["qc_flag"]]
    scores, dices = np.array([r["qc_score"] for r in rows]), np.array([r["dice"] for r in rows])
    return {
        "cases": len(rows),
        "bad_cases": len(bad), "bad_flagged": sum(r["qc_flag"] for r in bad),
        "bad_flagged_share": sum(r["qc_flag"] for r in bad) / len(bad) if bad else None,
        "good_cases": len(good), "good_flagged": sum(r["qc_flag"] for r in good),
        "good_flagged_share": sum(r["qc_flag"] for r in good) / len(good) if good else None,
        "flagged": len(flagged),
        "mean_dice": float(dices.mean()) if rows else None,
        "mean_dice_unflagged": float(np.mean([r["dice"] for r in rows if not r["qc_flag"]])) if len(flagged) < len(rows) else None,
        "spearman_qc_score_dice": _spearman(scores, dices) if len(rows) > 2 else None,
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", choices=["cxr_lungs", "cxr_anatomy"], default="cxr_lungs")
    parser.add_argument("--site", default="jsrt_scr", help="manifest name in data_manifests/ and folder under --data")
    parser.add_argument("--split", default="all", help="training, validation, testing or all")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--ckpt_path", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=0, help="first N cases only (0: all)")
    parser.add_argument("--output_file", type=Path, default=REPO / "runs" / "qc_check" / "qc_check.json")
    args = parser.parse_args(argv)

    manifest = json.loads((REPO / "data_manifests" / f"{args.site}.json").read_text())
    splits = ["training", "validation", "testing"] if args.split == "all" else [args.split]
    cases = [c for s in splits for c in manifest[s]]
    cases = cases[: args.limit] if args.limit else cases
    site_dir = args.data / args.site
    with tempfile.TemporaryDirectory() as tmp:
        inputs, out = Path(tmp) / "in", Path(tmp) / "out"
        inputs.mkdir()
        for case in cases:
            (inputs / Path(case["image"]).name).symlink_to(site_dir / case["image"])
        start = time.perf_counter()
        run_inference(args.bundle, inputs, out, args.ckpt_path)
        seconds = time.perf_counter() - start
        with open(out / "qc.csv", newline="") as f:
            qc = {r["stem"]: r for r in csv.DictReader(f)}
        rows = []
        for case in cases:
            row = qc[Path(case["image"]).stem]
            rows.append({"case": Path(case["image"]).name, "dice": case_dice(args.bundle, site_dir, case, out),
                         "qc_score": float(row["qc_score"]), "qc_flag": row["qc_flag"] == "true",
                         "reasons": row["reasons"]})
    result = {"bundle": args.bundle, "site": args.site, "split": args.split,
              "checkpoint": str(args.ckpt_path or BUNDLES / args.bundle / "models" / "model.pt"),
              "inference_seconds": seconds, "summary": summarise(rows), "cases": rows,
              "command": " ".join(sys.argv)}
    write_text(args.output_file, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
