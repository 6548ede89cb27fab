"""The cxr_lungs bundle against MONAI's bundle tooling, on CPU.

Nothing here writes into the bundle folder: checkpoints, logs and outputs go to
tmp_path, and the shipped model file is only read.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata
from PIL import Image

from xray_seg.shared.atomic import write_text
from xray_seg.chest.manifest import build_manifest
from xray_seg.synthetic.cxr import generate_dataset

BUNDLE = Path(__file__).resolve().parents[2] / "bundle" / "cxr_lungs"
CONFIGS = BUNDLE / "configs"
TRAIN = CONFIGS / "train.yaml"
INFER = CONFIGS / "inference.yaml"
META = CONFIGS / "metadata.json"
LOGGING = CONFIGS / "logging.conf"
NIFTI_AFFINE = np.diag([0.7, 0.5, 1.0, 1.0])
SHIPPED_MODEL = BUNDLE / "models" / "model.pt"
MAX_MODEL_BYTES = 20 * 1024 * 1024

# Top-level keys that meta_schema_20240725.json (the schema metadata.json names) requires,
# and the keys it requires of every tensor in network_data_format.
SCHEMA_REQUIRED = (
    "schema", "version", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright",
    "network_data_format",
)
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
# verify_metadata downloads the schema unless it is already at `filepath`: point this
# variable at a local copy to run it offline.
SCHEMA_ENV = "MONAI_BUNDLE_SCHEMA"


def _parser(config: Path) -> ConfigParser:
    p = ConfigParser()
    p.read_config(str(config))
    p.read_meta(str(META))
    p["bundle_root"] = str(BUNDLE)
    return p


@pytest.fixture(scope="module")
def train_parser() -> ConfigParser:
    return _parser(TRAIN)


@pytest.fixture(scope="module")
def infer_parser() -> ConfigParser:
    return _parser(INFER)


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads(META.read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny synthetic dataset and its manifest: (dataset_dir, manifest path)."""
    root = tmp_path_factory.mktemp("dataset")
    generate_dataset(root / "data", n_cases=6, size=64)
    manifest = build_manifest(root / "data")
    assert manifest["numTraining"] >= 1 and manifest["numValidation"] >= 1
    write_text(root / "manifest.json", json.dumps(manifest, indent=2))
    return root / "data", root / "manifest.json"


@pytest.fixture(scope="module")
def infer_inputs(tmp_path_factory: pytest.TempPathFactory, dataset: tuple[Path, Path]) -> Path:
    """Images to segment: a PNG, a non-square PNG (48 rows x 40 columns) and that one as NIfTI."""
    folder = tmp_path_factory.mktemp("infer_in")
    images = sorted((dataset[0] / "images").iterdir())
    with Image.open(images[0]) as im:
        im.save(folder / "square.png")
    with Image.open(images[1]) as im:
        tall = im.crop((0, 0, 40, 48))
        tall.save(folder / "tall.png")
    # NIfTI arrays are (x = column, y = row).
    nifti = nib.Nifti1Image(np.asarray(tall, dtype=np.float32).T.copy(), NIFTI_AFFINE)
    nib.save(nifti, folder / "tall_scan.nii.gz")
    return folder


def _fresh_network(parser: ConfigParser) -> torch.nn.Module:
    return parser.get_parsed_content("network_def", lazy=False)


def _train_overrides(dataset: tuple[Path, Path], tmp_path: Path) -> dict:
    data_dir, manifest = dataset
    return {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(data_dir),
        "datalist": str(manifest),
        "ckpt_dir": str(tmp_path / "models"),
        "log_dir": str(tmp_path / "logs"),
        "output_dir": str(tmp_path / "eval"),
        "num_workers": 0,
        "device": "$torch.device('cpu')",
    }


def _check_properties(workflow: ConfigWorkflow) -> list[str] | None:
    """initialize() then check_properties(); check_properties parses every property, and
    MONAI's ConfigWorkflow refuses to parse before initialize()."""
    workflow.initialize()
    try:
        return workflow.check_properties()
    finally:
        workflow.finalize()


# ---------------------------------------------------------------------------------------
# ConfigWorkflow properties
# ---------------------------------------------------------------------------------------


def test_train_workflow_properties(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    workflow = ConfigWorkflow(
        config_file=str(TRAIN), meta_file=str(META), logging_file=str(LOGGING),
        workflow_type="train", **_train_overrides(dataset, tmp_path),
    )
    assert not _check_properties(workflow)
    assert workflow.max_epochs == ConfigParser.load_config_file(str(TRAIN))["num_epochs"]
    assert len(workflow.train_dataset_data) >= 1
    assert (tmp_path / "logs").is_dir()  # everything went to tmp_path


def test_infer_workflow_properties(infer_inputs: Path, tmp_path: Path) -> None:
    workflow = ConfigWorkflow(
        config_file=str(INFER), meta_file=str(META), logging_file=str(LOGGING),
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        dataset_dir=str(infer_inputs),
        ckpt_path=str(BUNDLE / "models" / "model.pt"),
        output_dir=str(tmp_path / "out"),
        device="$torch.device('cpu')",
    )
    assert not _check_properties(workflow)
    names = sorted(Path(d["image"]).name for d in workflow.dataset_data)
    assert names == ["square.png", "tall.png", "tall_scan.nii.gz"]
    assert not (tmp_path / "out").exists()  # nothing is written before the run


def test_inference_runs_end_to_end(infer_parser: ConfigParser, infer_inputs: Path, tmp_path: Path) -> None:
    """The whole inference.yaml on CPU with random weights: one mask per input, at the input's
    own height and width, published only when all are done."""
    ckpt = tmp_path / "model.pt"
    torch.save(_fresh_network(infer_parser).state_dict(), ckpt)
    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=str(INFER), meta_file=str(META), logging_file=str(LOGGING),
        workflow_type="infer", bundle_root=str(BUNDLE), dataset_dir=str(infer_inputs),
        ckpt_path=str(ckpt), output_dir=str(out), device="$torch.device('cpu')",
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    # No .partial staging folder left behind.
    assert sorted(p.name for p in out.iterdir()) == ["qc.csv", "square_seg.png", "tall_scan_seg.nii.gz", "tall_seg.png"]
    # One quality row per input, sorted by stem; random weights give masks a person should check.
    rows = list(csv.DictReader((out / "qc.csv").open(newline="")))
    assert [r["stem"] for r in rows] == ["square", "tall", "tall_scan"]
    assert all(r["qc_flag"] in ("true", "false") and 0 <= float(r["qc_score"]) <= 1 for r in rows)
    assert all(bool(r["reasons"]) == (r["qc_flag"] == "true") for r in rows)
    for name, shape in (("square", (64, 64)), ("tall", (48, 40))):
        with Image.open(out / f"{name}_seg.png") as im:
            mask = np.asarray(im)
        assert mask.shape == shape
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 1}
    nifti = nib.load(out / "tall_scan_seg.nii.gz")
    assert nifti.shape == (40, 48)
    np.testing.assert_allclose(nifti.affine, NIFTI_AFFINE, atol=1e-6)
    assert set(np.unique(np.asarray(nifti.dataobj)).tolist()) <= {0, 1}


# ---------------------------------------------------------------------------------------
# Config ids and consistency
# ---------------------------------------------------------------------------------------

MONAI_LABEL_IDS = (
    "bundle_root", "device", "dataset_dir", "network_def", "network",
    "train#trainer", "train#dataset#data", "train#handlers",
    "validate#evaluator", "validate#dataset#data", "inferer",
)


@pytest.mark.parametrize("config_id", MONAI_LABEL_IDS)
def test_monai_label_ids_exist_in_train_config(train_parser: ConfigParser, config_id: str) -> None:
    assert config_id in train_parser
    assert train_parser.get(config_id) is not None


def test_network_matches_the_metadata(train_parser: ConfigParser) -> None:
    """metadata.json says what the network takes and gives (train and inference agreement:
    tests/shared/test_config_agreement.py)."""
    inputs = train_parser["_meta_#network_data_format#inputs#image"]
    outputs = train_parser["_meta_#network_data_format#outputs#pred"]
    assert train_parser["network_def#in_channels"] == inputs["num_channels"]
    assert train_parser.get_parsed_content("network_def#out_channels") == outputs["num_channels"]
    assert list(train_parser["roi_size"]) == list(inputs["spatial_shape"])


# ---------------------------------------------------------------------------------------
# metadata.json
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", ["cxr_lungs", "cxr_anatomy", "xray_tomography"])
def test_metadata_has_the_bundle_keys(bundle: str) -> None:
    metadata = json.loads((BUNDLE.parent / bundle / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"], "measured figures belong in eval_metrics"
    missing = [k for k in SCHEMA_REQUIRED if k not in metadata]
    assert not missing, f"metadata.json lacks {missing}"
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "task",
                "description", "authors", "copyright", "schema"):
        assert isinstance(metadata[key], str) and metadata[key], key
    assert isinstance(metadata["required_packages_version"], dict)
    # The bundle's configs import xray_seg: the package and its version are declared
    # (MONAI 1.6 reads the older optional_packages_version as required_packages_version).
    assert metadata["required_packages_version"]["xray-seg"] == importlib.metadata.version("xray-seg")
    assert "optional_packages_version" not in metadata
    assert metadata["version"] in metadata.get("changelog", {metadata["version"]: ""})
    fmt = metadata["network_data_format"]
    assert set(fmt) >= {"inputs", "outputs"}
    for group in ("inputs", "outputs"):
        assert fmt[group], f"network_data_format.{group} is empty"
        for name, tensor in fmt[group].items():
            missing = [k for k in TENSOR_REQUIRED if k not in tensor]
            assert not missing, f"{group}.{name} lacks {missing}"
            assert isinstance(tensor["num_channels"], int)
            assert len(tensor.get("channel_def", {})) in (0, tensor["num_channels"])
    assert "image" in fmt["inputs"]


def test_verify_metadata_against_schema(tmp_path: Path) -> None:
    schema = os.environ.get(SCHEMA_ENV)
    if not schema or not Path(schema).is_file():
        pytest.skip(
            "monai.bundle.verify_metadata downloads the schema named in metadata.json and there is "
            f"no network here; set {SCHEMA_ENV} to a local meta_schema_20240725.json to run it "
            "(test_metadata_has_the_bundle_keys checks the schema's required keys offline)"
        )
    pytest.importorskip("jsonschema")
    # An existing filepath is used as is: download_url skips the download.
    verify_metadata(meta_file=str(META), filepath=schema)


# ---------------------------------------------------------------------------------------
# Network: verify_net_in_out, TorchScript export, shipped weights
# ---------------------------------------------------------------------------------------


def test_verify_net_in_out() -> None:
    # Only network_def is parsed, so no data is read.
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=str(TRAIN), device="cpu",
        bundle_root=str(BUNDLE),
    )


def test_ckpt_export_to_torchscript(infer_parser: ConfigParser, metadata: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _fresh_network(infer_parser)
    ckpt, exported = tmp_path / "model.pt", tmp_path / "model.ts"
    torch.save(net.state_dict(), ckpt)
    ckpt_export(
        net_id="network_def", filepath=str(exported), ckpt_file=str(ckpt), meta_file=str(META),
        config_file=str(INFER), bundle_root=str(BUNDLE),
    )
    assert exported.is_file()
    # ckpt_export builds its own network_def (other random weights) and loads the
    # checkpoint into it, so equal outputs also show that the weights were loaded.
    scripted = torch.jit.load(str(exported), map_location="cpu")
    net.eval()
    scripted.eval()
    x = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = net(x), scripted(x)
    assert got.shape == expected.shape == (1, 2, 256, 256)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # The metadata and the inference config travel inside the TorchScript file.
    _, meta, extra = load_net_with_metadata(str(exported), more_extra_files=("inference.json",))
    assert meta["version"] == metadata["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "UNet"


def test_shipped_model_loads_strictly(infer_parser: ConfigParser) -> None:
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL} not present: train the bundle first (see train.yaml)")
    size = SHIPPED_MODEL.stat().st_size
    assert size < MAX_MODEL_BYTES, f"model.pt is {size / 2**20:.1f} MB"
    state = torch.load(SHIPPED_MODEL, weights_only=True, map_location="cpu")
    net = _fresh_network(infer_parser)
    net.load_state_dict(state, strict=True)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 256, 256))
    assert out.shape == (1, 2, 256, 256)
    assert torch.isfinite(out).all()
