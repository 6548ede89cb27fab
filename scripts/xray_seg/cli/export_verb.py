"""``xray-seg export``: a bundle's network as TorchScript or ONNX, configs and metadata embedded."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(verbs: argparse._SubParsersAction) -> None:
    from xray_seg.shared.export import BUNDLE_NAMES, FORMATS

    p = verbs.add_parser(
        "export", help="the network as TorchScript (ckpt_export) or ONNX (onnx_export), with its metadata",
        description="Export a bundle's network with MONAI's ckpt_export (TorchScript) or onnx_export (ONNX). "
                    "Both files carry the bundle's metadata.json and inference config. The shipped "
                    "models/model.pt is used unless --ckpt_path names another checkpoint.")
    p.add_argument("--bundle", required=True, help=f"{', '.join(BUNDLE_NAMES)}, or the path of a bundle folder")
    p.add_argument("--format", required=True, choices=FORMATS, help="torchscript (.ts) or onnx (.onnx)")
    p.add_argument("--output_file", type=Path, required=True, help="the file to write (never inside bundle/*/models)")
    p.add_argument("--ckpt_path", type=Path, help="weights to export (default: the bundle's models/model.pt)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xray_seg.shared.export import export_bundle

    path = export_bundle(args.bundle, args.format, args.output_file, ckpt_path=args.ckpt_path)
    print(f"wrote {path}")
    return 0
