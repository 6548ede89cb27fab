"""The entropy limits of the quality flag: mean entropy of a bundle's model on its own training split.

    PYTHONPATH=scripts python -m xray_seg.studies.qc_entropy --bundle cxr_lungs --site montgomery
    PYTHONPATH=scripts python -m xray_seg.studies.qc_entropy --bundle cxr_anatomy --site jsrt_scr

Runs the bundle's inference.yaml on the split's images and prints and writes JSON with
the mean normalised entropy of every input as the quality check computes it (the
value that ``xray_seg.chest.quality.qc_row`` compares with its limit), and the limit
rule used for ``LUNG_ENTROPY_LIMIT`` / ``ANATOMY_ENTROPY_LIMIT``: twice the largest
value, rounded to 2 decimals. The values are read by wrapping ``qc_row`` for the
run, because qc.csv keeps to its four documented columns.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from xray_seg.chest import quality
from xray_seg.shared.atomic import write_text
from xray_seg.shared.paths import DATA, REPO
from xray_seg.studies.qc_check import run_inference


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", choices=["cxr_lungs", "cxr_anatomy"], default="cxr_lungs")
    parser.add_argument("--site", default="montgomery")
    parser.add_argument("--split", default="training")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--ckpt_path", type=Path, default=None)
    parser.add_argument("--output_file", type=Path, default=None)
    args = parser.parse_args(argv)
    seen: dict[str, float] = {}
    original = quality.qc_row

    def recording(stem: str, entropy: float, limit: float, reasons: list[str]) -> dict:
        seen[stem] = entropy
        return original(stem, entropy, limit, reasons)

    cases = json.loads((REPO / "data_manifests" / f"{args.site}.json").read_text())[args.split]
    quality.qc_row = recording
    try:
        with tempfile.TemporaryDirectory() as tmp:
            inputs = Path(tmp) / "in"
            inputs.mkdir()
            for case in cases:
                (inputs / Path(case["image"]).name).symlink_to(args.data / args.site / case["image"])
            run_inference(args.bundle, inputs, Path(tmp) / "out", args.ckpt_path)
    finally:
        quality.qc_row = original
    values = np.array(list(seen.values()))
    result = {"bundle": args.bundle, "site": args.site, "split": args.split, "cases": len(values),
              "max": float(values.max()), "median": float(np.median(values)),
              "limit_rule": "2 x max, rounded to 2 decimals", "limit": round(2 * float(values.max()), 2),
              "per_case": seen}
    output = args.output_file or REPO / "runs" / "qc_check" / f"entropy_{args.bundle}_{args.site}_{args.split}.json"
    write_text(output, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_case"}, indent=2))
    return result


if __name__ == "__main__":
    main()
