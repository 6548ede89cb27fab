"""The seed report's experiments on the tomography bundle, as one script.

    xray-seg experiments tomo [--output_dir runs/tomo_experiments] [--epochs 4]
        [--budget_s 200] [--sizes 5 25 105] [--only noise,size,dims]

Every arm trains bundle/xray_tomography with its own train.yaml (short runs:
``--epochs`` of 25 steps, or ``--budget_s`` of wall time for the 2D/3D pair),
then is scored on the manifest's testing slab with evaluate.yaml, clean and
with Gaussian noise of standard deviation 5000 in 16-bit units:

- noise: training without noise vs with noise on every patch;
- size: training on the first N slices of the training slab, N = 5 ... 105;
- dims: 2D slice-wise UNet (slicewise.yaml) vs 3D UNet.

Writes ``results.json``, ``results.csv``, ``results.md`` (the table) and
``results.png`` (Dice against training slices, and the noise and 2D/3D arms) in
the output folder, plus each arm's model, logs and evaluation reports. Arms whose
evaluation is already there are not run again, so a killed run resumes.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xray_seg.shared.atomic import atomic_path, write_text
from xray_seg.shared.bundles import bundle_command
from xray_seg.shared.errors import UserError
from xray_seg.shared.paths import REPO

BUNDLE = REPO / "bundle" / "xray_tomography"
MANIFEST = REPO / "data_manifests" / "soc_ptycho.json"
NOISE_STD = 5000.0


def arms(sizes: list[int], only: set[str], epochs: int, budget_s: float) -> list[dict]:
    """Each arm: a name, its group, the configs and the overrides of its training run.

    Noise and size arms train for the same number of steps (``epochs`` of the
    bundle's steps_per_epoch), which other load on the machine cannot skew; the
    2D and 3D arms get the same wall time instead, since their steps cost
    different amounts.
    """
    steps = {"num_epochs": epochs, "val_interval": epochs}
    out = []
    if "noise" in only:
        out += [
            {"name": "3d_no_noise", "group": "noise", "configs": [], "train": {**steps, "noise_prob": 0.0}},
            {"name": "3d_noise", "group": "noise", "configs": [], "train": {**steps, "noise_prob": 1.0}},
        ]
    if "size" in only:
        out += [{"name": f"3d_{n}_slices", "group": "size", "slices": n, "configs": [], "train": dict(steps)}
                for n in sizes]
    if "dims" in only:
        timed = {"time_limit_s": int(budget_s), "num_epochs": 1000, "val_interval": 1}  # a model.pt before time runs out
        out += [
            {"name": "2d_slicewise", "group": "dims", "configs": ["slicewise.yaml"], "train": dict(timed)},
            {"name": "3d", "group": "dims", "configs": [], "train": dict(timed)},
        ]
    return out


def _subset_manifest(workdir: Path, slices: int) -> Path:
    """The manifest with its training slab cut to its first ``slices`` slices."""
    manifest = json.loads(MANIFEST.read_text())
    start, stop = manifest["training"][0]["slices"]
    if slices > stop - start:
        raise UserError(f"the training slab has {stop - start} slices, fewer than {slices}")
    manifest["training"] = [{**manifest["training"][0], "slices": [start, start + slices]}]
    path = workdir / f"manifest_{slices}_slices.json"
    write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def _run(cmd: list[str], log: Path) -> float:
    start = time.time()
    with atomic_path(log) as tmp, open(tmp, "w") as handle:
        result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"ERROR: {' '.join(cmd[:6])} ... failed; see {log}")
    return time.time() - start


def run_arm(arm: dict, workdir: Path, dataset_dir: str | None) -> dict:
    folder = workdir / arm["name"]
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    common = {"run_dir": folder / "run"}
    if dataset_dir:
        common["dataset_dir"] = dataset_dir
    if "slices" in arm:
        common["datalist"] = _subset_manifest(workdir, arm["slices"])
    train_cmd = bundle_command(["train.yaml", *arm["configs"]], bundle=BUNDLE, **arm["train"], **common)
    print(f"== {arm['name']}: training with {arm['train']}", flush=True)
    train_s = _run(train_cmd, folder / "train.log")
    result = {k: v for k, v in arm.items() if k not in ("configs", "train")}
    result.update(train_overrides=arm["train"], configs=["train.yaml", *arm["configs"]], train_wall_s=round(train_s))
    for condition, noise in (("clean", 0.0), ("noisy", NOISE_STD)):
        out = folder / f"eval_{condition}"
        cmd = bundle_command(["train.yaml", *arm["configs"], "evaluate.yaml"], bundle=BUNDLE, output_dir=out,
                             ckpt_path=folder / "run" / "model.pt",
                             val_noise_std=noise, baseline=condition == "clean", **common)
        _run(cmd, folder / f"eval_{condition}.log")
        metrics = json.loads((out / "metrics.json").read_text())
        result[f"dice_{condition}"] = metrics["mean_dice"]
        result[f"boundary_accuracy_{condition}"] = metrics["case_measures"]["boundary_accuracy"]
        if condition == "clean":
            result["baseline_dice"] = json.loads((out / "baseline_metrics.json").read_text())["mean_dice"]
        print(f"   {condition}: mean Dice {metrics['mean_dice']:.4f}", flush=True)
    write_text(done, json.dumps(result, indent=2) + "\n")
    return result


def write_table(results: list[dict], workdir: Path) -> None:
    columns = ["name", "group", "slices", "train_wall_s", "dice_clean", "dice_noisy",
               "boundary_accuracy_clean", "boundary_accuracy_noisy", "baseline_dice"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)
    write_text(workdir / "results.csv", buffer.getvalue())
    write_text(workdir / "results.json", json.dumps(results, indent=2) + "\n")
    lines = ["| arm | train s | Dice clean | Dice noisy | boundary acc. clean | boundary acc. noisy |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['train_wall_s']} | {r['dice_clean']:.4f} | {r['dice_noisy']:.4f} | "
                     f"{r['boundary_accuracy_clean']:.4f} | {r['boundary_accuracy_noisy']:.4f} |")
    if results:
        lines.append(f"| two-threshold baseline | - | {results[0]['baseline_dice']:.4f} | - | - | - |")
    write_text(workdir / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(results: list[dict], path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = sorted((r for r in results if r["group"] == "size"), key=lambda r: r["slices"])
    if sizes:
        x = [r["slices"] for r in sizes]
        left.plot(x, [r["dice_clean"] for r in sizes], "o-", label="clean test slab")
        left.plot(x, [r["dice_noisy"] for r in sizes], "s--", label="noisy test slab (std 5000)")
        left.axhline(sizes[0]["baseline_dice"], color="grey", linestyle=":", label="two-threshold baseline")
        left.set(xlabel="training slices", ylabel="mean Dice (3 phases)", title="Training-set size")
        left.legend()
    others = [r for r in results if r["group"] != "size"]
    if others:
        names = [r["name"] for r in others]
        pos = range(len(others))
        right.bar([p - 0.2 for p in pos], [r["dice_clean"] for r in others], width=0.4, label="clean")
        right.bar([p + 0.2 for p in pos], [r["dice_noisy"] for r in others], width=0.4, label="noisy")
        right.set_xticks(list(pos), names, rotation=20)
        low = min(min(r["dice_clean"], r["dice_noisy"]) for r in others)
        right.set_ylim(max(0.0, low - 0.05), 1.0)
        right.set(ylabel="mean Dice (3 phases)", title="Noise (equal steps), 2D/3D (equal time)")
        right.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def run_experiments(output_dir: Path, epochs: int, budget_s: float, sizes: list[int], only: set[str],
                    dataset_dir: str | None = None) -> list[dict]:
    """Every arm (skipping finished ones), then the table and the figure in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    results = [run_arm(arm, output_dir, dataset_dir) for arm in arms(sizes, only, epochs, budget_s)]
    write_table(results, output_dir)
    plot(results, output_dir / "results.png")
    return results
