"""``xray-seg train | evaluate | infer``: thin fronts to the bundles' MONAI workflows.

The command builds the config file list (train: train.yaml + mix-ins; evaluate:
train.yaml + mix-ins + evaluate.yaml; infer: inference.yaml + mix-ins), checks the
settings, prints the equivalent `python -m monai.bundle run` command and runs that
same workflow in this process. With --nproc or --nnodes it adds the bundle's
multi_gpu_*.yaml mix-in and runs the command under torchrun instead.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

import yaml

from xray_seg.shared.bundles import JOBS, parse_overrides, prepare
from xray_seg.shared.errors import UserError
from xray_seg.shared.paths import BUNDLES

HELP = {
    "train": "train a bundle's network (writes checkpoints and TensorBoard logs)",
    "evaluate": "score a trained model on the manifest's test split (metrics, collage, curves)",
    "infer": "segment every image or volume in a folder",
}
# The mix-in that a run on several processes (torchrun) adds, per verb.
DISTRIBUTED_MIXIN = {"train": "multi_gpu_train.yaml", "evaluate": "multi_gpu_evaluate.yaml",
                     "infer": "multi_gpu_inference.yaml"}
# Named flags: config ids that every user sets; any other id is given as --ID VALUE.
NAMED = {
    "train": ["dataset_dir", "datalist", "output_dir", "run_name", "device"],
    "evaluate": ["dataset_dir", "datalist", "output_dir", "ckpt_path", "run_name", "device"],
    "infer": ["dataset_dir", "output_dir", "ckpt_path", "device"],
}
FLAG_HELP = {
    "dataset_dir": "data folder (infer: the folder of inputs to segment, required); default: the config's",
    "datalist": "data manifest (JSON) with the training/validation/testing split; default: the config's",
    "output_dir": "where reports or segmentations go; default: the config's",
    "ckpt_path": "model weights to use; default: the config's",
    "run_name": "name of the run folder; default: the config's",
    "device": "cpu, cuda or cuda:N (default: cuda:0 when available)",
}
# Settings worth listing in --help, with each bundle's default.
MAIN_SETTINGS = {
    "train": ["num_epochs", "val_interval", "learning_rate", "batch_size", "image_size", "roi_size", "patch_size",
              "num_workers", "resume", "run_dir", "ckpt_dir", "init_weights", "seed", "fold"],
    "evaluate": ["split", "ckpt_path", "output_dir"],
    "infer": ["image_size", "roi_size", "patch_size", "slab_depth", "save_overlay", "ckpt_path", "output_dir"],
}


def _defaults(job: str) -> str:
    """The main settings' defaults of every bundle, read from their configs."""
    names = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()) if BUNDLES.is_dir() else []
    merged = {}
    for name in names:
        config: dict = {}
        first, last = JOBS[job]
        for file in first + last:
            config.update(yaml.safe_load((BUNDLES / name / "configs" / file).read_text()) or {})
        merged[name] = config
    lines = [f"main settings (--ID VALUE), defaults for {' | '.join(names)}:"]
    for key in MAIN_SETTINGS[job]:
        values = [merged[n].get(key, "-") for n in names]
        if all(v == "-" for v in values):
            continue
        shown = " | ".join(_show(v) for v in values)
        lines.append(f"  --{key:<14} {shown}")
    return "\n".join(lines)


def _epilog(job: str) -> str:
    return (
        f"{_defaults(job)}\n\nAny other config id is a setting too, e.g. --num_workers 0, "
        f"--train#dataloader#batch_size 4; values are YAML ([64,64], true, null).\n"
        f"Unknown ids are refused with the closest valid one."
    )


# How the configs' default expressions read in --help.
SHOWN = (
    (re.compile(r"^\$xray_seg\.shared\.runs\.output_dir\(@bundle_root, '(\w+)'\)$"), r"runs/<bundle>/\1"),
    (re.compile(r"^\$xray_seg\.shared\.runs\.eval_dir\(.*\)$"), "<run folder of ckpt_path>/eval or runs/<bundle>/eval"),
    (re.compile(r"^\$xray_seg\.shared\.runs\.run_dir\(.*\)$"), "runs/<bundle>/<run_name>"),
    (re.compile(r"^@run_dir$"), "the run folder"),
)


def _show(value: object) -> str:
    if isinstance(value, str):
        for pattern, shown in SHOWN:
            if pattern.match(value):
                return pattern.sub(shown, value)
        return value.replace("$@bundle_root + '/", "<bundle>/").replace("'", "")
    return json.dumps(value)


def register(verbs: argparse._SubParsersAction) -> None:
    for job in JOBS:
        p = verbs.add_parser(job, help=HELP[job], description=HELP[job][0].upper() + HELP[job][1:] + ".\n\n" + __doc__.split("\n\n")[1],
                             epilog_fn=lambda job=job: _epilog(job))
        p.add_argument("--bundle", required=True,
                       help="cxr_lungs, cxr_anatomy, xray_tomography, or the path of a bundle folder")
        p.add_argument("--config", action="append", default=[], metavar="EXTRA.yaml",
                       help="mix-in config from the bundle's configs folder (or a path), e.g. invertednet.yaml; repeatable")
        for flag in NAMED[job]:
            p.add_argument(f"--{flag}", help=FLAG_HELP[flag])
        if job in DISTRIBUTED_MIXIN:
            launch = p.add_argument_group(f"several processes or machines (torchrun; {DISTRIBUTED_MIXIN[job]})")
            launch.add_argument("--nproc", type=int, default=1,
                                help="processes on this machine: one per GPU, or CPU processes with gloo (default: 1)")
            launch.add_argument("--nnodes", type=int, default=1, help="machines taking part (default: 1)")
            launch.add_argument("--node_rank", type=int, default=0, help="this machine's rank, 0..nnodes-1")
            launch.add_argument("--rdzv_endpoint", default="127.0.0.1:29400",
                                help="host:port where the machines meet, on node 0 (default: %(default)s)")
            launch.add_argument("--rdzv_id", default="xray-seg", help="the same on every machine of one run")
        p.add_argument("--dry_run", action="store_true",
                       help="check the settings and print the python -m monai.bundle run command, run nothing")
        p.set_defaults(run=run, job=job, takes_settings=True, input_errors=(UserError,))


def distributed(args: argparse.Namespace) -> bool:
    return args.job in DISTRIBUTED_MIXIN and (args.nproc > 1 or args.nnodes > 1)


def torchrun_command(args: argparse.Namespace, bundle_cmd: list[str]) -> list[str]:
    """PyTorch's own launcher (torchrun) around the bundle command: it starts the processes,
    sets RANK/LOCAL_RANK/WORLD_SIZE and the rendezvous; the multi_gpu_*.yaml mix-in does the rest."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc)]
    if args.nnodes > 1:
        launch += ["--nnodes", str(args.nnodes), "--node_rank", str(args.node_rank), "--rdzv_backend", "c10d",
                   "--rdzv_endpoint", args.rdzv_endpoint, "--rdzv_id", args.rdzv_id]
    else:
        launch += ["--standalone"]
    return launch + bundle_cmd[1:]  # "-m monai.bundle run ..." without the interpreter


def run(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = {flag: getattr(args, flag) for flag in NAMED[args.job] if getattr(args, flag) is not None}
    overrides |= parse_overrides(extra)
    # The distributed mix-in first, so that the user's own mix-ins can still change what it sets;
    # evaluate's goes after evaluate.yaml, whose process setup (initialize) it replaces.
    launcher = [DISTRIBUTED_MIXIN[args.job]] if distributed(args) else []
    mixins, after = (args.config, launcher) if args.job == "evaluate" else ([*launcher, *args.config], [])
    job = prepare(args.job, args.bundle, mixins, overrides, cwd=Path.cwd(), after=after)
    command = torchrun_command(args, job.command()) if distributed(args) else job.command()
    print("$ " + shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    if distributed(args):
        return launch(command)
    job.run()
    return 0


def launch(command: list[str]) -> int:
    """Run the torchrun ``command`` (``python -m torch.distributed.run ...``) in this process.

    In this process rather than as a subprocess so that a run refused for bad input ends
    as in one process: the ranks print their ``ERROR:`` line and exit 2, and so does
    this command, without torchrun's error report (a traceback per failed rank)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run as torchrun

    try:
        torchrun(parse_args(command[3:]))
    except ChildFailedError as err:
        codes = sorted({failure.exitcode for failure in err.failures.values()})
        if 2 in codes:  # bad input (xray_seg.shared.errors); the other ranks may have been stopped
            return 2
        print(f"ERROR: {len(err.failures)} process(es) of the run failed, exit status {codes}; see their output above",
              file=sys.stderr)
        return 1
    return 0
