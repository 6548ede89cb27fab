"""The quick-start job: the whole cxr_lungs workflow on generated data, in minutes on a CPU.

    xray-seg demo [--output_dir runs/demo] [--epochs 40]

1. generates a small synthetic chest X-ray dataset with exact lung masks,
2. builds its data manifest,
3. trains the cxr_lungs bundle on it, then evaluates and segments the test images,

each bundle step with the same ``python -m monai.bundle run`` command a user would
type (printed before it runs). Needs no external data and leaves the shipped
model in bundle/cxr_lungs/models untouched.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from xray_seg.chest.manifest import build_manifest
from xray_seg.shared.bundles import bundle_command
from xray_seg.shared.atomic import write_text
from xray_seg.shared.paths import BUNDLES
from xray_seg.synthetic.cxr import generate_dataset

BUNDLE = BUNDLES / "cxr_lungs"


def run_step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    code = subprocess.run(cmd).returncode
    if code != 0:
        print(f"ERROR: the demo's {title} step failed (exit status {code}); its log is above", file=sys.stderr)
        raise SystemExit(code)
    print(f"== {title}: done in {time.time() - start:.0f} s", flush=True)


def _description() -> str:
    paragraphs = __doc__.split("\n\n")
    return "\n\n".join([paragraphs[0], *paragraphs[2:]]).replace("``", "`")


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("demo", help="the whole cxr_lungs workflow on generated data, in minutes on a CPU",
                         description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", type=Path, default=Path("runs/demo"),
                   help="where data, model and reports go (default: %(default)s)")
    p.add_argument("--n_cases", type=int, default=40, help="synthetic cases to generate (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default: %(default)s)")
    p.add_argument("--image_size", type=int, default=128,
                   help="network input size, longest side (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    work = args.output_dir.resolve()
    data_dir, run_dir, masks_out = work / "data", work / "run", work / "inference"
    evaluation = run_dir / "eval"
    manifest = work / "manifest.json"

    print(f"== generating {args.n_cases} synthetic radiographs in {data_dir}", flush=True)
    generate_dataset(data_dir, n_cases=args.n_cases, size=256, seed=0)
    datalist = build_manifest(data_dir, seed=0, val_fraction=0.15, test_fraction=0.25, name="synthetic_cxr")
    write_text(manifest, json.dumps(datalist, indent=2))
    print(f"== manifest {manifest}: {datalist['numTraining']} training, "
          f"{datalist['numValidation']} validation, {datalist['numTest']} test cases", flush=True)

    common = dict(
        dataset_dir=data_dir, datalist=manifest, run_dir=run_dir,
        image_size=args.image_size, roi_size=[args.image_size] * 2,
    )  # fmt: skip
    run_step("train", bundle_command(["train.yaml"], **common, num_epochs=args.epochs, val_interval=2, resume=False))
    run_step("evaluate", bundle_command(["train.yaml", "evaluate.yaml"], **common, ckpt_path=run_dir / "model.pt"))

    test_images = work / "test_images"
    test_images.mkdir(exist_ok=True)
    for item in datalist["testing"]:
        link = test_images / Path(item["image"]).name
        if not link.exists():
            link.symlink_to(data_dir / item["image"])
    run_step(
        "inference",
        bundle_command(
            ["inference.yaml"],
            dataset_dir=test_images, output_dir=masks_out, ckpt_path=run_dir / "model.pt",
            image_size=args.image_size, roi_size=[args.image_size] * 2, save_overlay=True,
        ),  # fmt: skip
    )

    metrics = json.loads((evaluation / "metrics.json").read_text())
    print(
        f"\nTest Dice on {metrics['num_cases']} synthetic cases: {metrics['mean_dice']:.3f}\n"
        f"  metrics:   {evaluation / 'metrics.json'}\n"
        f"  per case:  {evaluation / 'metrics_per_case.csv'}\n"
        f"  collage:   {evaluation / 'collage.png'}\n"
        f"  curves:    {evaluation / 'training_curves.png'}\n"
        f"  masks:     {masks_out}  (*_seg.png, *_overlay.png)\n"
        f"  TensorBoard: tensorboard --logdir {run_dir / 'logs'}"
    )
    return 0
