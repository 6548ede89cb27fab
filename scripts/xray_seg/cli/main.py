"""``xray-seg``: one command for what users do with the bundles.

Each verb lives in a module of this package that adds its parser (``register``)
and runs it; this module assembles them and turns bad input into one ``ERROR:``
line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xray_seg.shared.errors import EXIT_BAD_INPUT, INPUT_ERRORS
from xray_seg.shared.quiet import filter_library_warnings


class Parser(argparse.ArgumentParser):
    """argparse with the project's error line: usage, then ``ERROR: ...``, exit status 2."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        self.epilog_fn = epilog_fn  # an epilog worth computing only when help is shown
        kwargs.setdefault("allow_abbrev", False)  # --data must not silently mean --dataset_dir
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"ERROR: {self.prog}: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> Parser:
    from xray_seg.cli import bundle_verbs, data_verbs, demo, export_verb, label_verb, study_verbs

    parser = Parser(prog="xray-seg", description="X-ray segmentation bundles: " + __doc__.split("\n\n")[0].split(": ", 1)[1],
                    epilog="Run `xray-seg VERB --help` for a verb's settings. Bad input: one ERROR: line, exit status 2.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    demo.register(verbs)
    data_verbs.register_manifest(verbs)
    bundle_verbs.register(verbs)
    export_verb.register(verbs)
    label_verb.register(verbs)
    study_verbs.register(verbs)
    data_verbs.register_synthetic(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    filter_library_warnings()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_settings", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Bad input rather than a bug: the message names the file or the option. A verb may narrow
    # this (the bundle verbs: MONAI's own errors inside a workflow keep their traceback).
    errors = getattr(args, "input_errors", INPUT_ERRORS)
    try:
        return args.run(args, extra) if getattr(args, "takes_settings", False) else args.run(args)
    except errors as err:
        named = isinstance(err, OSError) and err.filename is not None
        message = f"{err.strerror}: {err.filename}" if named else str(err)
        print(f"ERROR: {message}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
