"""Exports of the three bundles: TorchScript and ONNX give the PyTorch network's logits and masks."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from monai.bundle import ConfigParser

from xray_seg.shared.errors import UserError, or_exit
from xray_seg.shared.export import BUNDLE_NAMES, FORMATS, export_bundle
from xray_seg.shared.paths import BUNDLES, MANIFESTS
from xray_seg.tomography.transforms import intensity_range, scale
from xray_seg.tomography.volume_io import read_volume

# Max abs logit difference allowed between an export and the PyTorch network. The
# exports compute the same float32 arithmetic in another order (ONNX Runtime picks
# its own convolution kernels and folds batch norm into them; sums of thousands of
# products round differently), so logits of magnitude ~10 differ by 1e-6..3e-5
# (measured). 1e-4 leaves headroom for other CPUs while being far below what a real
# export fault gives (wrong weights, batch norm left in training mode, a dropped or
# reordered layer: differences of 0.1 and more).
TOL = 1e-4
# Where float32 itself is coarser than TOL (cxr_anatomy on 512 x 512 JSRT images,
# logits up to 33: PyTorch's own float32 logits are 1.5e-4 from a float64 run on the
# Intel VM and 2.3e-4 on the AMD VM, ONNX Runtime's 2.6e-4 and 2.7e-4, the two 2.2e-4
# and 4.8e-4 apart, with ONNX Runtime's graph optimisations on or off), an export may
# differ by up to this many times PyTorch's float32 error on that input. Masks must
# still be identical.
F32_ERROR_FACTOR = 3

# Shapes other than the export's example input (batch 2, the bundle's patch size):
# the exports must take any batch and any spatial size divisible by the network's stride.
RANDOM_SHAPES = {
    "cxr_lungs": (3, 1, 192, 256),
    "cxr_anatomy": (1, 1, 320, 256),
    "xray_tomography": (2, 1, 16, 48, 64),
}
SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}
CASES = [(b, f) for b in BUNDLE_NAMES for f in FORMATS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each (bundle, format) exported once for the module, on first use (ONNX takes ~9 s)."""
    folder = tmp_path_factory.mktemp("exports")
    return functools.cache(lambda bundle, fmt: export_bundle(bundle, fmt, folder / f"{bundle}{SUFFIX[fmt]}"))


@functools.cache
def network(bundle: str) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(BUNDLES / bundle / "configs" / "inference.yaml")
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(BUNDLES / bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def run_export(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path)).eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def masks(bundle: str, logits: np.ndarray) -> np.ndarray:
    """The masks the bundle's postprocessing makes: sigmoid > 0.5 per structure for
    cxr_anatomy, argmax over the classes (softmax first changes nothing) otherwise."""
    return logits > 0 if bundle == "cxr_anatomy" else logits.argmax(axis=1)


def assert_parity(bundle: str, fmt: str, path: Path, x: np.ndarray) -> None:
    with torch.no_grad():
        expected = network(bundle)(torch.from_numpy(x)).numpy()
    got = run_export(path, fmt, x)
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    if diff >= TOL:
        with torch.no_grad():
            exact = copy.deepcopy(network(bundle)).double()(torch.from_numpy(x).double()).numpy()
        f32_error = float(np.abs(expected - exact).max())
        assert diff < F32_ERROR_FACTOR * f32_error, \
            f"{bundle} {fmt}: max abs logit difference {diff:.2e}; PyTorch float32 vs float64: {f32_error:.2e}"
        print(f"{bundle} {fmt}: PyTorch float32 vs float64 {f32_error:.2e}")
    assert np.array_equal(masks(bundle, got), masks(bundle, expected))
    print(f"{bundle} {fmt} {tuple(x.shape)}: max abs logit difference {diff:.2e}")


@pytest.mark.parametrize("bundle, fmt", CASES)
def test_export_matches_pytorch_on_random_input(exported, bundle: str, fmt: str) -> None:
    x = torch.rand(RANDOM_SHAPES[bundle], generator=torch.Generator().manual_seed(0)).numpy()
    assert_parity(bundle, fmt, exported(bundle, fmt), x)


def _real_inputs(bundle: str, data_dir: Path) -> np.ndarray:
    """A few test-split inputs, preprocessed as the bundle's inference does."""
    if bundle == "xray_tomography":  # a 32 x 96 x 96 crop of the test slab, scaled as segment_volume does
        item = json.loads((MANIFESTS / "soc_ptycho.json").read_text())["testing"][0]
        z0 = item["slices"][0]
        slab, _ = read_volume(data_dir / "soc_ptycho" / item["image"], slices=(z0, z0 + 32))
        volume = torch.from_numpy(slab[:, 200:296, 200:296].astype(np.float32))
        return scale(volume, *intensity_range(slab))[None, None].numpy()
    dataset, manifest = {"cxr_lungs": ("montgomery", "montgomery.json"),
                         "cxr_anatomy": ("jsrt_scr", "jsrt_scr.json")}[bundle]
    items = json.loads((MANIFESTS / manifest).read_text())["testing"][:2]
    parser = ConfigParser()
    parser.read_config(BUNDLES / bundle / "configs" / "inference.yaml")
    preprocessing = parser.get_parsed_content("preprocessing")
    images = [preprocessing({"image": str(data_dir / dataset / it["image"])})["image"].as_tensor() for it in items]
    return torch.stack(images).numpy()


@pytest.mark.real_data
@pytest.mark.parametrize("bundle, fmt", CASES)
def test_export_matches_pytorch_on_real_test_images(exported, data_dir: Path, bundle: str, fmt: str) -> None:
    assert_parity(bundle, fmt, exported(bundle, fmt), _real_inputs(bundle, data_dir))


@pytest.mark.parametrize("bundle, fmt", CASES)
def test_export_embeds_metadata_and_inference_config(exported, bundle: str, fmt: str) -> None:
    configs = BUNDLES / bundle / "configs"
    path = exported(bundle, fmt)
    if fmt == "torchscript":
        embedded = {"metadata.json": "", "inference.json": ""}
        torch.jit.load(str(path), _extra_files=embedded)
    else:
        embedded = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(embedded["metadata.json"]) == json.loads((configs / "metadata.json").read_text())
    assert json.loads(embedded["inference.json"]) == ConfigParser.load_config_file(configs / "inference.yaml")


def test_onnx_input_and_output_have_free_batch_and_spatial_axes(exported) -> None:
    graph = onnx.load(str(exported("xray_tomography", "onnx"))).graph
    (image,), (pred,) = graph.input, graph.output
    assert (image.name, pred.name) == ("image", "pred")
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "depth", "height", "width"]


def test_onnx_export_without_onnx_installed_says_which_extra(tmp_path: Path, monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxscript" else find_spec(name, *args))
    with pytest.raises(UserError, match=r"ONNX export needs onnxscript: pip install 'xray-seg\[export\]'"):
        export_bundle("cxr_lungs", "onnx", tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


def test_export_refuses_bad_requests_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.ts"
    not_a_ckpt = tmp_path / "notes.pt"
    not_a_ckpt.write_text("not weights")
    a_file = tmp_path / "file"
    a_file.write_text("")
    anatomy_weights = BUNDLES / "cxr_anatomy" / "models" / "model.pt"
    refused = [
        (dict(bundle="cxr_heart", fmt="onnx"), "unknown bundle 'cxr_heart'"),
        (dict(bundle="cxr_lungs", fmt="tflite"), "unknown export format 'tflite'"),
        (dict(bundle="cxr_lungs", fmt="onnx", ckpt_path=tmp_path / "none.pt"), "none.pt not found"),
        (dict(bundle="cxr_lungs", fmt="onnx", ckpt_path=not_a_ckpt), "cannot be read as PyTorch weights"),
        (dict(bundle="cxr_lungs", fmt="torchscript", ckpt_path=anatomy_weights), "does not fit the network"),
        (dict(bundle="cxr_lungs", fmt="torchscript", output_file=a_file / "model.ts"), "cannot write"),
        (dict(bundle="cxr_lungs", fmt="torchscript", output_file=tmp_path), "is a directory"),
        (dict(bundle="cxr_lungs", fmt="torchscript", output_file=BUNDLES / "cxr_lungs" / "models" / "model.ts"),
         "models/ folder"),
    ]
    before = sorted(tmp_path.rglob("*"))
    for kwargs, message in refused:
        with pytest.raises(UserError, match=message.replace(".", r"\.")):
            export_bundle(**{"output_file": out, **kwargs})
    assert sorted(tmp_path.rglob("*")) == before
    # Through the one bad-input rule, as the command line calls it: one ERROR line, exit status 2.
    with pytest.raises(SystemExit) as exit_info:
        or_exit(lambda: export_bundle("cxr_lungs", "onnx", out, ckpt_path=not_a_ckpt))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (BUNDLES / "cxr_lungs" / "models" / "model.ts").exists()
