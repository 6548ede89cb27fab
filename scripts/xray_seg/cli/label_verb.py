"""``xray-seg label setup | serve``: the MONAI Label server of the three bundles (xray_seg.label)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(verbs: argparse._SubParsersAction) -> None:
    from xray_seg.label import environment

    label = verbs.add_parser(
        "label", help="annotate and retrain through a MONAI Label server (its own environment)",
        description="A MONAI Label server for the three bundles, offline, on its own copy of each bundle. "
                    "`setup` builds its environment (.venv-label) once; `serve` starts the server.")
    kinds = label.add_subparsers(dest="kind", required=True, metavar="ACTION")
    setup = kinds.add_parser("setup", help="build the MONAI Label environment (nothing to do when it is built)")
    setup.add_argument("--venv", type=Path, default=environment.VENV, help="where (default: %(default)s)")
    setup.add_argument("--force", action="store_true", help="rebuild even when built")
    setup.set_defaults(run=run_setup)
    serve = kinds.add_parser("serve", help="start the server for a folder of images to annotate")
    serve.add_argument("--studies", type=Path, required=True,
                       help="folder of the images to annotate (labels go into its labels/)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve.add_argument("--work_dir", type=Path, help="bundle copies and fine-tuning runs "
                                                     "(default: STUDIES/.xray-seg-label)")
    serve.add_argument("--venv", type=Path, default=environment.VENV, help="the MONAI Label environment")
    serve.add_argument("--log_level", default="info")
    serve.set_defaults(run=run_serve)


def run_setup(args: argparse.Namespace) -> int:
    from xray_seg.label import environment

    print(environment.build(args.venv, force=args.force))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from xray_seg.label import server

    return server.serve(args.studies, args.host, args.port, args.work_dir, args.venv, args.log_level)
