"""The cross-site report of ``cxr_lungs``: how each model holds up at a site it never saw.

    xray-seg report sites [--model NAME=CHECKPOINT:SITE+SITE ...] [--output_dir DIR]

Each model is evaluated with the bundle's own evaluation config (train.yaml +
evaluate.yaml, so the same preprocessing, post-processing and quality flag as
inference) on every site of the multi-site manifest:

- a site the model was trained on: that site's test split only;
- a site it was not trained on: every case of that site (all splits; the model
  never saw any of them), which is leave-one-site-out testing.

The defaults are the shipped multi-site model and the two leave-one-site-out models,
trained in the shipped model's two stages: ``xray-seg train --bundle cxr_lungs --sites
"['montgomery']" --run_name loso_montgomery_s1``, then the same with ``--run_name
loso_montgomery --init_weights runs/cxr_lungs/loso_montgomery_s1/model.pt
--learning_rate 0.0003`` (and ``jsrt``). Per model and site: mean, median and minimum
Dice, HD95, cases below 0.90 and 0.85, and how well the quality flag finds the bad
masks (of the masks below 0.85 Dice, the share flagged; of those above 0.95, the
share flagged; AUROC of ``1 - qc_score`` for masks below 0.85 and below 0.90), and where
the outlines differ: the mean signed offset of the predicted outline from the truth's
per region (medial, lateral, apex, base; ``xray_seg.chest.boundary_offsets``), which
shows a site's drawing protocol apart from failures. Writes
``cross_site.json``, ``cross_site.md``, ``worst_<model>_on_<site>.png`` (the worst
cases, truth in blue, prediction in red) and each evaluation's own report folder.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from xray_seg.chest.boundary_offsets import REGIONS, dice_cost
from xray_seg.shared.errors import UserError
from xray_seg.shared.paths import BUNDLES, DATA, MANIFESTS, RUNS

BUNDLE = BUNDLES / "cxr_lungs"
CONFIGS = BUNDLE / "configs"
MANIFEST = MANIFESTS / "cxr_lungs_sites.json"
SPLITS = ["training", "validation", "testing"]
BAD, GOOD = 0.85, 0.95  # the thresholds for "a mask to catch" and "a mask to leave alone"
WORST_ROWS = 6

DEFAULT_MODELS = (
    f"multi-site={BUNDLE / 'models' / 'model.pt'}:montgomery+jsrt",
    f"montgomery-only={RUNS / 'cxr_lungs' / 'loso_montgomery' / 'model.pt'}:montgomery",
    f"jsrt-only={RUNS / 'cxr_lungs' / 'loso_jsrt' / 'model.pt'}:jsrt",
)


@dataclass(frozen=True)
class Model:
    name: str
    checkpoint: Path
    trained_on: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Model":
        name, sep, rest = text.partition("=")
        checkpoint, colon, sites = rest.rpartition(":")
        if not (sep and name and colon and checkpoint and sites):
            raise UserError(f"--model {text!r}: expected NAME=CHECKPOINT:SITE[+SITE], e.g. a=runs/x/model.pt:jsrt")
        return cls(name, Path(checkpoint), tuple(sites.split("+")))


def _evaluate(model: Model, site: str, splits: list[str], data_dir: Path, manifest: Path, output_dir: Path) -> list[dict]:
    """Run the bundle's evaluation of ``model`` on ``site`` and return its per-case rows."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
        meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train", bundle_root=str(BUNDLE),
        dataset_dir=str(data_dir), datalist=str(manifest), ckpt_path=str(model.checkpoint),
        sites=[site], split=splits, output_dir=str(output_dir), collage_rows=WORST_ROWS,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    with open(output_dir / "metrics_per_case.csv", newline="") as f:
        return list(csv.DictReader(f))


def _auroc(bad: list[bool], risk: list[float]) -> float | None:
    """AUROC of ``risk`` for finding the ``bad`` cases (MONAI's metric); None without both kinds."""
    if all(bad) or not any(bad):
        return None
    import torch
    from monai.metrics import compute_roc_auc

    return float(compute_roc_auc(torch.tensor(risk, dtype=torch.float64), torch.tensor(bad, dtype=torch.float64)))


def _offsets(rows: list[dict]) -> dict:
    """Per region: mean signed outline offset (px at 512 rows) and the share of cases drawn outside the truth."""
    out = {}
    for region in REGIONS:
        values = [float(r[f"offset_{region}_px"]) for r in rows]
        values = [v for v in values if math.isfinite(v)]
        out[region] = {"mean": statistics.fmean(values) if values else None,
                       "cases_outside": sum(v > 0 for v in values), "cases": len(values)}  # fmt: skip
    return out


def summarise(rows: list[dict]) -> dict:
    """Dice, HD95 and quality-flag figures of one evaluation's per-case rows."""
    dice = [float(r["dice_lung"]) for r in rows]
    hd95 = [float(r["hd95_lung"]) for r in rows if r.get("hd95_lung") not in (None, "", "nan", "inf")]
    summary: dict = {
        "cases": len(rows),
        "mean_dice": statistics.fmean(dice),
        "median_dice": statistics.median(dice),
        "min_dice": min(dice),
        "mean_hd95_px": statistics.fmean(hd95) if hd95 else None,
        "median_hd95_px": statistics.median(hd95) if hd95 else None,
        "below_0.90": sum(d < 0.90 for d in dice),
        "below_0.85": sum(d < BAD for d in dice),
        "worst": sorted(((float(r["dice_lung"]), r["case"]) for r in rows))[:3],
    }
    if rows and "offset_medial_px" in rows[0]:
        summary["boundary_offset_px"] = _offsets(rows)
    if rows and "qc_score" in rows[0]:
        flagged = [str(r["qc_flag"]).lower() == "true" for r in rows]
        risk = [1.0 - float(r["qc_score"]) for r in rows]
        bad = [d < BAD for d in dice]
        good = [d > GOOD for d in dice]
        summary["qc"] = {
            "flagged": sum(flagged),
            "bad_cases": sum(bad),
            "bad_flagged": sum(f for f, b in zip(flagged, bad) if b),
            "good_cases": sum(good),
            "good_flagged": sum(f for f, g in zip(flagged, good) if g),
            "auroc_below_0.85": _auroc(bad, risk),
            "auroc_below_0.90": _auroc([d < 0.90 for d in dice], risk),
        }
    return summary


def _one_pixel_cost(site: str, data_dir: Path, manifest: Path) -> float | None:
    """Mean Dice lost on ``site``'s test-split truths by an outline 1 px (at 512 rows) further out
    (None when the site has no test cases)."""
    import numpy as np
    from PIL import Image

    from xray_seg.shared.splits import EmptySplitError, load_split

    try:
        cases = load_split(manifest, data_dir, "testing", None, [site])
    except EmptySplitError:
        return None
    costs = []
    for case in cases:
        labels = case["label"] if isinstance(case["label"], list) else [case["label"]]
        costs.append(dice_cost(np.logical_or.reduce([np.asarray(Image.open(p).convert("L")) > 0 for p in labels])))
    return statistics.fmean(costs) if costs else None


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "0/0"


def _markdown(report: dict) -> str:
    def fmt(x: float | None, digits: int = 4) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    lines = [
        "# cxr_lungs cross-site report",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; {report['seconds']:.0f} s.",
        "",
        "Dice and HD95 (pixels, at the images' 512x512 size) after the bundle's post-processing.",
        "A site the model was trained on is tested on its test split; any other site on every case.",
        "",
        "| model | trained on | tested on | cases | mean Dice | median | min | HD95 mean | < 0.90 | < 0.85 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["evaluations"]:
        s = e["summary"]
        lines.append(
            f"| {e['model']} | {'+'.join(e['trained_on'])} | {e['site']} ({e['which']}) | {s['cases']} | "
            f"{fmt(s['mean_dice'])} | {fmt(s['median_dice'])} | {fmt(s['min_dice'])} | "
            f"{fmt(s['mean_hd95_px'], 2)} | {s['below_0.90']} | {s['below_0.85']} |"
        )
    if any("qc" in e["summary"] for e in report["evaluations"]):
        lines += [
            "",
            f"Quality flag (`qc.csv`): of the masks below {BAD} Dice, the share flagged; of those above {GOOD}, "
            "the share flagged (false alarms); AUROC of 1 - qc_score.",
            "",
            f"| model | tested on | flagged | Dice < {BAD} flagged | Dice > {GOOD} flagged | AUROC (< 0.85) | AUROC (< 0.90) |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in report["evaluations"]:
            q = e["summary"].get("qc")
            if q:
                lines.append(
                    f"| {e['model']} | {e['site']} ({e['which']}) | {_share(q['flagged'], e['summary']['cases'])} | "
                    f"{_share(q['bad_flagged'], q['bad_cases'])} | {_share(q['good_flagged'], q['good_cases'])} | "
                    f"{fmt(q['auroc_below_0.85'], 3)} | {fmt(q['auroc_below_0.90'], 3)} |"
                )
        pooled = report.get("qc_leave_one_site_out")
        if pooled:
            lines += [
                "",
                f"Pooled over the leave-one-site-out evaluations: Dice < {BAD} flagged "
                f"{_share(pooled['bad_flagged'], pooled['bad_cases'])}, Dice > {GOOD} flagged "
                f"{_share(pooled['good_flagged'], pooled['good_cases'])}, AUROC (< 0.85) "
                f"{fmt(pooled['auroc_below_0.85'], 3)}, AUROC (< 0.90) {fmt(pooled['auroc_below_0.90'], 3)}.",
            ]
    if any("boundary_offset_px" in e["summary"] for e in report["evaluations"]):
        lines += [
            "",
            "Where the outlines differ: mean signed offset of the predicted lung outline from the truth's, in "
            "pixels at 512 rows (+ outside the truth), per region (`xray_seg.chest.boundary_offsets`), with the "
            "share of cases drawn outside. A site's drawing protocol shows as the same sign on most cases. "
            "For scale, an outline 1 px further out all round costs "
            + ", ".join(f"{fmt(cost)} Dice on {site}" for site, cost in report.get("one_pixel_offset_dice_cost", {}).items())
            + " (test-split truths).",
            "",
            "| model | tested on | " + " | ".join(REGIONS) + " |",
            "|---|---|" + "---|" * len(REGIONS),
        ]
        for e in report["evaluations"]:
            o = e["summary"].get("boundary_offset_px")
            if o:
                cells = [f"{'n/a' if o[r]['mean'] is None else format(o[r]['mean'], '+.2f')} "
                         f"({o[r]['cases_outside']}/{o[r]['cases']} out)" for r in REGIONS]
                lines.append(f"| {e['model']} | {e['site']} ({e['which']}) | " + " | ".join(cells) + " |")
    lines += ["", "Worst cases: " + ", ".join(f"`{e['worst_collage']}`" for e in report["evaluations"]), ""]
    return "\n".join(lines)


def cross_site_report(models: list[Model], output_dir: Path, data_dir: Path = DATA, command: str = "",
                      manifest: Path = MANIFEST) -> dict:
    from xray_seg.shared.atomic import write_text
    from xray_seg.shared.machine import cpu_name, load_average

    missing = [m for m in models if not m.checkpoint.is_file()]
    if missing:
        raise UserError(
            "; ".join(f"{m.checkpoint}: no checkpoint for model {m.name}" for m in missing)
            + ". Train the leave-one-site-out models first: xray-seg train --bundle cxr_lungs "
            "--sites \"['montgomery']\" --run_name loso_montgomery_s1, then the same with --run_name "
            "loso_montgomery --init_weights runs/cxr_lungs/loso_montgomery_s1/model.pt --learning_rate 0.0003 "
            "(and jsrt / loso_jsrt); see bundle/cxr_lungs/docs/README.md"
        )
    sites = json.loads(Path(manifest).read_text())["sites"]
    output_dir.mkdir(parents=True, exist_ok=True)
    start, load_before = time.perf_counter(), (load_average() or [float("nan")])[0]
    evaluations, pooled_rows = [], []
    for model in models:
        for site in sites:
            seen = site in model.trained_on
            splits = ["testing"] if seen else SPLITS
            folder = output_dir / "evaluations" / f"{model.name}_on_{site}"
            rows = _evaluate(model, site, splits, data_dir, manifest, folder)
            worst = output_dir / f"worst_{model.name}_on_{site}.png"
            shutil.copyfile(folder / "collage.png", worst)
            if not seen:
                pooled_rows += rows
            evaluations.append({
                "model": model.name, "checkpoint": str(model.checkpoint), "trained_on": list(model.trained_on),
                "site": site, "which": "test split" if seen else "every case, unseen site",
                "splits": splits, "summary": summarise(rows), "worst_collage": worst.name,
                "report_folder": str(folder.relative_to(output_dir)),
            })  # fmt: skip
            print(f"{model.name} on {site}: mean Dice {evaluations[-1]['summary']['mean_dice']:.4f} "
                  f"over {len(rows)} cases", flush=True)
    report = {
        "command": command,
        "machine": f"{cpu_name()}, load average {load_before:.1f} before / {(load_average() or [float('nan')])[0]:.1f} after",
        "seconds": time.perf_counter() - start,
        "manifest": str(manifest),
        "evaluations": evaluations,
    }
    report["one_pixel_offset_dice_cost"] = {site: _one_pixel_cost(site, data_dir, manifest) for site in sites}
    if pooled_rows:
        report["qc_leave_one_site_out"] = summarise(pooled_rows).get("qc")
    write_text(output_dir / "cross_site.json", json.dumps(report, indent=2) + "\n")
    write_text(output_dir / "cross_site.md", _markdown(report))
    return report
