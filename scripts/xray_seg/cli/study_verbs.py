"""``xray-seg benchmark | experiments | baseline | curves``: measurements and studies of the bundles."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from xray_seg.shared.errors import UserError
from xray_seg.shared.paths import DATA, MANIFESTS

DEFAULTS = argparse.ArgumentDefaultsHelpFormatter


def parse_size(text: str) -> tuple[int, int, int]:
    """'512' -> (512, 512, 512); '1024x1024x512' -> (z, y, x) = (512, 1024, 1024): x by y by z, as sizes are said."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or XxYxZ, got {text!r}")
    x, y, z = parts
    return z, y, x


def _command() -> str:
    return shlex.join(["xray-seg", *sys.argv[1:]])


def register(verbs: argparse._SubParsersAction) -> None:
    bench = verbs.add_parser("benchmark", help="speed, memory and accuracy of a bundle",
                             description="Speed, memory and accuracy of a bundle, written as JSON.")
    kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")
    cxr = kinds.add_parser(
        "cxr", formatter_class=DEFAULTS, help="cxr_lungs: training and inference images/s, peak memory, test Dice",
        description="cxr_lungs at 512x512: training and inference images/s on synthetic images and peak memory, "
                    "each in a process of its own; the shipped model's test Dice on Montgomery when present.",
    )  # fmt: skip
    cxr.add_argument("--output_file", type=Path, default=Path("runs/benchmark/cxr_lungs.json"), help="report to write")
    cxr.add_argument("--n_images", type=int, default=24, help="synthetic 512x512 images per speed run")
    cxr.add_argument("--epochs", type=int, default=3, help="training epochs (the first is not timed)")
    cxr.add_argument("--dataset_dir", type=Path, default=DATA / "montgomery", help="Montgomery folder (timed images); its parent, the data root, holds the test split")
    cxr.add_argument("--phase", choices=["train", "infer", "dice"], help=argparse.SUPPRESS)
    cxr.set_defaults(run=benchmark_cxr)

    tomo = kinds.add_parser(
        "tomo", formatter_class=DEFAULTS, help="xray_tomography: streaming inference voxels/s and peak memory",
        description="xray_tomography: streaming sliding-window inference of synthetic volumes of each size "
                    "(generated once, kept in the output folder), voxels/s and peak memory.",
    )  # fmt: skip
    tomo.add_argument("--sizes", type=parse_size, nargs="+", default=["256", "512", "1024x1024x512"],
                      help="volume sizes, N or XxYxZ")
    tomo.add_argument("--output_dir", type=Path, default=Path("runs/benchmark_tomo"),
                      help="volumes, outputs and benchmark.json")
    tomo.add_argument("--slab_depth", type=int, default=None,
                      help="slices segmented at a time (default: the bundle's, chosen from its slab_voxels)")
    tomo.add_argument("--halo", type=int, default=16, help="context slices on each side of a slab")
    tomo.add_argument("--max_angles", type=int, default=128, help="cap on the simulated scan's projection angles")
    tomo.add_argument("--generate_only", action="store_true", help="make the volumes, measure nothing")
    tomo.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
    tomo.set_defaults(run=benchmark_tomo)

    speed = kinds.add_parser(
        "throughput", formatter_class=DEFAULTS, help="network-only vs end-to-end inference speed, 2D and 3D",
        description="Inference throughput side by side, in one run: the network alone and the bundle's own "
                    "inference end to end, with their ratio; 2D (cxr_lungs, 512x512 PNGs) and 3D "
                    "(xray_tomography, one volume). On a GPU: --device cuda [--amp].",
    )  # fmt: skip
    speed.add_argument("--output_file", type=Path, default=Path("runs/benchmark/throughput.json"),
                       help="report to write")
    speed.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    speed.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    speed.add_argument("--n_images", type=int, default=200, help="synthetic 512x512 radiographs for the 2D pipeline")
    speed.add_argument("--volume", type=parse_size, default="256x256x256", help="3D volume size, XxYxZ")
    speed.set_defaults(run=benchmark_throughput)

    gpu = kinds.add_parser(
        "gpu", formatter_class=DEFAULTS, help="all GPU figures in one short run: inference, training, torchrun",
        description="On a CUDA machine, in a few minutes: 2D and 3D inference throughput (network only, end to end, "
                    "ratio) with and without AMP, training steps/s of each bundle, peak GPU memory, and with two "
                    "GPUs a 2-process torchrun training against one. --device cpu runs the same code at small "
                    "sizes (a check that it works, not GPU figures).",
    )  # fmt: skip
    gpu.add_argument("--output_file", type=Path, default=Path("runs/benchmark/gpu.json"), help="report to write")
    gpu.add_argument("--device", default="cuda", help="cuda[:N], or cpu for a small check run")
    gpu.set_defaults(run=benchmark_gpu)

    label = kinds.add_parser(
        "label", formatter_class=DEFAULTS, help="MONAI Label server: latency, fine-tune time, Dice before/after",
        description="The MONAI Label server on real data (its environment must be built: xray-seg label setup): "
                    "per-endpoint latency, fine-tune time, and held-out Dice before and after a fine-tune on newly "
                    "labelled training-split images, for each 2D bundle; 3D infer latency on the tomography volume.",
    )  # fmt: skip
    label.add_argument("--dataset_dir", type=Path, default=DATA, help="the real data folder")
    label.add_argument("--output_file", type=Path, default=Path("runs/benchmark/label.json"), help="report to write")
    label.add_argument("--n_new", type=int, default=3, help="newly labelled images per bundle")
    label.add_argument("--n_held_out", type=int, default=6, help="test-split images scored before and after")
    label.add_argument("--val_split", type=float, default=None,
                       help="fine-tune setting (default: the server's); 0 validates on the new images themselves")
    label.add_argument("--only", choices=["cxr_lungs", "cxr_anatomy", "xray_tomography"])
    label.set_defaults(run=benchmark_label)

    experiments = verbs.add_parser("experiments", help="the report's experiments (tomography)",
                                   description="The seed report's experiments.")
    kinds = experiments.add_subparsers(dest="kind", required=True, metavar="KIND")
    exp = kinds.add_parser(
        "tomo", formatter_class=DEFAULTS, help="noise, training-set size and 2D vs 3D on xray_tomography",
        description="Train and score xray_tomography arms: without/with noise, training slabs of --sizes slices, "
                    "2D slice-wise vs 3D at equal wall time. Finished arms are not run again.",
    )  # fmt: skip
    exp.add_argument("--output_dir", type=Path, default=Path("runs/tomo_experiments"), help="arms, table and figure")
    exp.add_argument("--epochs", type=int, default=4, help="epochs of the noise and size arms (25 steps each)")
    exp.add_argument("--budget_s", type=float, default=200.0, help="training wall time of the 2D and 3D arms")
    exp.add_argument("--sizes", type=int, nargs="+", default=[5, 25, 105], help="training slices of the size arms")
    exp.add_argument("--only", default="noise,size,dims", help="comma-separated groups to run")
    exp.add_argument("--dataset_dir", type=Path, help="soc_ptycho folder (default: the bundle's)")
    exp.set_defaults(run=experiments_tomo)

    baseline = verbs.add_parser("baseline", help="non-learned baselines to beat",
                                description="Non-learned baselines every model must beat.")
    kinds = baseline.add_subparsers(dest="kind", required=True, metavar="KIND")
    base = kinds.add_parser(
        "tomo", formatter_class=DEFAULTS, help="two global intensity thresholds on soc_ptycho",
        description="Fit two intensity thresholds on the manifest's training split, score --split as the "
                    "bundle's evaluation scores the model; writes baseline_metrics.json.",
    )  # fmt: skip
    base.add_argument("--datalist", type=Path, default=MANIFESTS / "soc_ptycho.json", help="data manifest")
    base.add_argument("--dataset_dir", type=Path, default=DATA / "soc_ptycho", help="data folder")
    base.add_argument("--output_dir", type=Path, default=Path("runs/threshold_baseline"),
                      help="where baseline_metrics.json goes")
    base.add_argument("--label_values", type=int, nargs="+", default=[0, 128, 255], help="label voxel values, class order")
    base.add_argument("--class_names", nargs="+", default=["pores", "zirconia", "nickel"])
    base.add_argument("--split", default="testing", help="the split to score (fitted on 'training')")
    base.set_defaults(run=baseline_tomo)

    curves = verbs.add_parser("curves", formatter_class=DEFAULTS, help="plot training curves from TensorBoard logs",
                              description="Plot training loss and validation Dice from a TensorBoard log folder.")
    curves.add_argument("--log_dir", type=Path, required=True, help="TensorBoard log folder of a training run")
    curves.add_argument("--output_file", type=Path, required=True, help="PNG to write")
    curves.add_argument("--loss_tag", default="train_loss", help="scalar tag of the loss")
    curves.add_argument("--metric_tag", default="val_mean_dice", help="scalar tag of the validation metric")
    curves.set_defaults(run=plot_curves)

    report = verbs.add_parser("report", help="evaluation reports across models and data",
                              description="Evaluation reports that compare models across data.")
    reports = report.add_subparsers(dest="kind", required=True, metavar="KIND")
    sites = reports.add_parser(
        "sites", formatter_class=DEFAULTS, help="cxr_lungs: cross-site (leave-one-site-out) table and quality flag",
        description="Evaluate cxr_lungs models on every site of the multi-site manifest: a site a model was "
                    "trained on by its test split, any other site by every case. Writes cross_site.json, "
                    "cross_site.md and collages of the worst cases.",
    )  # fmt: skip
    from xray_seg.studies.cross_site import DEFAULT_MODELS

    sites.add_argument("--model", action="append", dest="models", metavar="NAME=CHECKPOINT:SITE[+SITE]",
                       help="a model and the sites it was trained on (repeat); default: "
                            + "; ".join(DEFAULT_MODELS))
    sites.add_argument("--dataset_dir", type=Path, default=DATA, help="the data root of the multi-site manifest")
    sites.add_argument("--output_dir", type=Path, default=Path("runs/cxr_lungs/cross_site"), help="report folder")
    sites.set_defaults(run=report_sites)


def benchmark_cxr(args: argparse.Namespace) -> int:
    from xray_seg.studies import benchmark_cxr as benchmark

    if args.phase:  # the child process of one measurement: its result is its last output line
        print(json.dumps(benchmark.measure(args.phase, args.n_images, args.epochs, args.dataset_dir)))
        return 0
    report = benchmark.benchmark(args.output_file, args.n_images, args.epochs, args.dataset_dir, _command())
    print(json.dumps(report, indent=2))
    print(f"wrote {args.output_file}")
    return 0


def benchmark_throughput(args: argparse.Namespace) -> int:
    from xray_seg.shared.inputs import device_problem
    from xray_seg.studies import throughput

    if problem := device_problem(args.device):
        raise UserError(problem)
    volume = parse_size(args.volume) if isinstance(args.volume, str) else args.volume
    report = throughput.benchmark(args.output_file, args.device, args.amp, args.n_images, volume, _command())
    print(throughput.table(report))
    print(f"wrote {args.output_file}")
    return 0


def benchmark_gpu(args: argparse.Namespace) -> int:
    from xray_seg.shared.inputs import device_problem
    from xray_seg.studies import gpu_check

    if problem := device_problem(args.device):
        raise UserError(problem.replace("or leave --device out", "for a small check that this script works"))
    report = gpu_check.benchmark(args.output_file, args.device, _command())
    print(gpu_check.table(report))
    print(f"wrote {args.output_file}")
    return 0


def benchmark_label(args: argparse.Namespace) -> int:
    from xray_seg.studies import benchmark_label

    benchmark_label.benchmark(args.dataset_dir, args.output_file, args.n_new, args.n_held_out, args.val_split,
                              args.only)
    print(f"wrote {args.output_file}")
    return 0


def benchmark_tomo(args: argparse.Namespace) -> int:
    from xray_seg.studies import benchmark_tomo as benchmark

    sizes = [parse_size(s) if isinstance(s, str) else s for s in args.sizes]
    if args.child:
        overrides = {"halo": args.halo, **({"slab_depth": args.slab_depth} if args.slab_depth else {})}
        print(json.dumps(benchmark.segment(Path(args.child[0]), Path(args.child[1]), overrides)))
        return 0
    if args.generate_only:
        for size in sizes:
            print(benchmark.volume_for(size, args.output_dir, args.max_angles), flush=True)
        return 0
    report = benchmark.benchmark(sizes, args.output_dir, args.slab_depth, args.halo, args.max_angles, _command())
    print(json.dumps(report, indent=2))
    print(f"wrote {args.output_dir / 'benchmark.json'}")
    return 0


def experiments_tomo(args: argparse.Namespace) -> int:
    from xray_seg.studies.tomo_experiments import run_experiments

    dataset_dir = str(args.dataset_dir.resolve()) if args.dataset_dir else None
    run_experiments(args.output_dir, args.epochs, args.budget_s, args.sizes, set(args.only.split(",")), dataset_dir)
    print(f"wrote {args.output_dir / 'results.md'} and {args.output_dir / 'results.png'}")
    return 0


def baseline_tomo(args: argparse.Namespace) -> int:
    from xray_seg.tomography.evaluation import threshold_baseline_report

    start = time.perf_counter()
    report = threshold_baseline_report(str(args.datalist), str(args.dataset_dir), str(args.output_dir),
                                       args.label_values, args.class_names, split=args.split)
    summary = {k: report[k] for k in ("thresholds", "mean_dice", "accuracy", "boundary_accuracy", "interior_accuracy")}
    summary["dice"] = {name: c["dice"] for name, c in report["classes"].items()}
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary, indent=2))
    return 0


def plot_curves(args: argparse.Namespace) -> int:
    from xray_seg.shared.figures import plot_training_curves

    plot_training_curves(args.log_dir, args.output_file, loss_tag=args.loss_tag, metric_tag=args.metric_tag)
    print(args.output_file)
    return 0


def report_sites(args: argparse.Namespace) -> int:
    from xray_seg.shared.outputs import check_output_dir
    from xray_seg.studies.cross_site import DEFAULT_MODELS, Model, cross_site_report

    models = [Model.parse(m) for m in (args.models or DEFAULT_MODELS)]
    check_output_dir(args.output_dir)
    report = cross_site_report(models, args.output_dir, args.dataset_dir, command=_command())
    print(f"wrote {args.output_dir / 'cross_site.md'} and cross_site.json ({len(report['evaluations'])} evaluations)")
    return 0
