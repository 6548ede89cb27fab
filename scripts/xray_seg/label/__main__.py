"""``python -m xray_seg.label setup`` builds the MONAI Label environment (.venv-label);
``python -m xray_seg.label serve --studies DIR [--port 8000]`` starts the server."""

from __future__ import annotations

import argparse
import sys

from xray_seg.shared.errors import UserError, fail


def main(argv: list[str] | None = None) -> int:
    from xray_seg.label import environment, server

    parser = argparse.ArgumentParser(prog="python -m xray_seg.label", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    setup = verbs.add_parser("setup", help="build the MONAI Label environment (nothing to do when built)")
    setup.add_argument("--venv", default=str(environment.VENV), help="where (default: .venv-label in the checkout)")
    setup.add_argument("--force", action="store_true", help="rebuild even when built")
    serve = verbs.add_parser("serve", help="start the MONAI Label server")
    serve.add_argument("--studies", required=True, help="folder of the images to annotate (labels go in its labels/)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--work-dir", default=None, help="bundle copies and fine-tuning runs "
                                                        "(default: STUDIES/.xray-seg-label)")
    serve.add_argument("--venv", default=str(environment.VENV), help="the MONAI Label environment")
    serve.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        if args.verb == "setup":
            print(environment.build(args.venv, force=args.force))
            return 0
        return server.serve(args.studies, args.host, args.port, args.work_dir, args.venv, args.log_level)
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
