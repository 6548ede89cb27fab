"""Export a bundle's network to TorchScript or ONNX with MONAI's own bundle tooling.

``monai.bundle.ckpt_export`` scripts the network of ``configs/inference.yaml``
(``network_def``) and stores ``metadata.json`` and ``inference.json`` (the config as
JSON) inside the ``.ts`` file. ``monai.bundle.onnx_export`` writes the ONNX model
but drops the metadata and config, so they are added here as the model's
``metadata_props`` under the same two names.

The ONNX model takes ``image`` (N, 1, H, W) or (N, 1, D, H, W), float32 scaled as
the bundle's preprocessing does, and returns the logits ``pred`` (N, C, ...).
Batch and spatial sizes are free; each spatial size must be divisible by the
network's total stride (16 for the 2D UNets, 8 for the 3D one).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from xray_seg.shared.atomic import atomic_path
from xray_seg.shared.errors import UserError
from xray_seg.shared.paths import BUNDLES

BUNDLE_NAMES = ("cxr_lungs", "cxr_anatomy", "xray_tomography")
FORMATS = ("torchscript", "onnx")
NET_ID = "network_def"
CONFIG = "inference.yaml"
INPUT_NAME, OUTPUT_NAME = "image", "pred"
# Names of the embedded files (.ts extra files, ONNX metadata_props): MONAI's for the TorchScript file.
METADATA_KEY = "metadata.json"
CONFIG_KEY = "inference.json"


def bundle_dir(bundle: str | os.PathLike) -> Path:
    """The folder of one of this project's bundles, given its name or its path."""
    path = Path(bundle)
    if path.name not in BUNDLE_NAMES:
        raise UserError(f"unknown bundle {str(bundle)!r}: expected one of {', '.join(BUNDLE_NAMES)} "
                        "(a name, or a path to bundle/<name>)")
    root = path if path.is_dir() else BUNDLES / path.name
    if not (root / "configs" / CONFIG).is_file():
        raise UserError(f"bundle {root} has no configs/{CONFIG}")
    return root


def _checked_output(output_file: str | os.PathLike, ckpt: Path) -> Path:
    out = Path(output_file).absolute()
    if out.is_dir():
        raise UserError(f"output file {out} is a directory")
    folder = out.resolve().parent
    if out.resolve() == ckpt.resolve() or (folder.name == "models" and folder.parent.parent == BUNDLES.resolve()):
        raise UserError(f"output file {out}: refusing to write into a bundle's models/ folder (shipped weights)")
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output file {out}: cannot write to {parent or out.parent}")
    return out


def _checked_checkpoint(ckpt: Path, config: Path) -> str:
    """Check that ``ckpt`` fits the network of ``config``; return the key of its weights:
    "model" in a training checkpoint ({"model": ..., "optimizer": ...}), "" for bare weights."""
    import torch
    from monai.bundle import ConfigParser

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise UserError(f"checkpoint {ckpt} cannot be read as PyTorch weights: {str(e).splitlines()[0]}") from e
    key = "model" if isinstance(state, dict) and isinstance(state.get("model"), dict) else ""
    parser = ConfigParser()
    parser.read_config(config)
    try:
        parser.get_parsed_content(NET_ID).load_state_dict(state[key] if key else state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"checkpoint {ckpt} does not fit the network of {config}: "
                        f"{str(e).splitlines()[0]}") from e
    return key


def _input_shape(meta_file: Path) -> tuple[list[int], int]:
    """Example input (batch 2, the bundle's patch size) and the number of spatial dimensions."""
    image = json.loads(meta_file.read_text())["network_data_format"]["inputs"]["image"]
    spatial = list(image["spatial_shape"])
    # Batch 2: torch.export treats an example size of 1 as a constant.
    return [2, int(image["num_channels"]), *spatial], len(spatial)


def _onnx(tmp: Path, ckpt: Path, key: str, config: Path, meta_file: Path) -> None:
    import onnx
    from monai.bundle import ConfigParser, onnx_export
    from torch.export import Dim

    shape, ndim = _input_shape(meta_file)
    spatial = ("depth", "height", "width")[3 - ndim:]
    axes = {0: Dim("batch"), **{2 + i: Dim(name) for i, name in enumerate(spatial)}}  # channel axis fixed
    onnx_export(
        net_id=NET_ID, filepath=str(tmp), ckpt_file=str(ckpt), meta_file=str(meta_file), config_file=str(config),
        key_in_ckpt=key, input_shape=shape,
        # use_trace=True is what lets converter_kwargs reach torch.onnx.export; with dynamo=True
        # (PyTorch's default exporter) the network is captured by torch.export, not traced.
        use_trace=True,
        converter_kwargs={"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "dynamo": True,
                          "external_data": False, "dynamic_shapes": (axes,), "verbose": False},
    )
    model = onnx.load(str(tmp))
    for name, path in ((METADATA_KEY, meta_file), (CONFIG_KEY, config)):  # as JSON, as ckpt_export stores them
        model.metadata_props.add(key=name, value=json.dumps(ConfigParser.load_config_file(path)))
    onnx.save(model, str(tmp))


def export_bundle(bundle: str | os.PathLike, fmt: str, output_file: str | os.PathLike,
                  ckpt_path: str | os.PathLike | None = None) -> Path:
    """Export ``bundle``'s network with the weights ``ckpt_path`` (default: the shipped
    ``<bundle>/models/model.pt``) to ``output_file`` as ``fmt`` ("torchscript" or "onnx").

    The file appears whole or not at all. Raises UserError for an unknown bundle or
    format, a missing or unfitting checkpoint, or a destination that cannot be written.
    """
    root = bundle_dir(bundle)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    missing = [m for m in ("onnx", "onnxscript") if fmt == "onnx" and importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install 'xray-seg[export]'")
    ckpt = Path(ckpt_path) if ckpt_path is not None else root / "models" / "model.pt"
    if not ckpt.is_file():
        raise UserError(f"checkpoint {ckpt} not found")
    out = _checked_output(output_file, ckpt)
    config, meta_file = root / "configs" / CONFIG, root / "configs" / "metadata.json"
    key = _checked_checkpoint(ckpt, config)
    try:
        with atomic_path(out) as tmp:
            if fmt == "torchscript":
                from monai.bundle import ckpt_export

                ckpt_export(net_id=NET_ID, filepath=str(tmp), ckpt_file=str(ckpt), meta_file=str(meta_file),
                            config_file=str(config), key_in_ckpt=key)
            else:
                _onnx(tmp, ckpt, key, config, meta_file)
    except OSError as e:
        raise UserError(f"output file {out}: cannot write: {e}") from e
    return out
