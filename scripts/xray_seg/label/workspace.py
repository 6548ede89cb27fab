"""The app's working folder: its own copy of each bundle, and what the server says about them.

The server never reads or writes the repository's ``bundle/<name>/models``: at start-up
each bundle is copied once into ``<work_dir>/bundles/<name>`` and everything (inference,
fine-tuning, the models a fine-tune promotes) uses that copy. A copy that already
exists is kept, so fine-tuned models survive a restart; delete the folder to go back
to the shipped weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from xray_seg.chest.anatomy import LABEL_VALUES
from xray_seg.shared.paths import BUNDLES

BUNDLE_NAMES = ("cxr_lungs", "cxr_anatomy", "xray_tomography")
# Label values the server returns and expects back (/info, /infer, /datastore/label).
# Tomography: every phase is a segment, pores included, so the phases are the network's
# class indices + 1 and 0 means "not labelled" (see infer.TomographyInfer).
LABELS: dict[str, dict[str, int]] = {
    "cxr_lungs": {"lung": 1},
    "cxr_anatomy": dict(LABEL_VALUES),
    "xray_tomography": {"pores": 1, "zirconia": 2, "nickel": 3},
}
DIMENSION = {"cxr_lungs": 2, "cxr_anatomy": 2, "xray_tomography": 3}
DESCRIPTION = {
    "cxr_lungs": "Both lungs on a chest radiograph (2D UNet): 1 lung",
    "cxr_anatomy": "Chest anatomy on a radiograph (2D UNet, one channel per structure): 1 right lung, "
                   "2 left lung, 3 heart, 4 right clavicle, 5 left clavicle; clavicle > heart > lung where they overlap",
    "xray_tomography": "Phases of an X-ray tomography volume (3D UNet, slab-streamed): 1 pores, 2 zirconia, 3 nickel",
}
MODEL_FILE = Path("models") / "model.pt"
# Left out of the copies: documentation and anything a command-line run left in the bundle.
_IGNORE = shutil.ignore_patterns("docs", "eval", "logs", "resume_checkpoint*", "__pycache__", ".*")


def bundles_dir(work_dir: str | os.PathLike) -> Path:
    return Path(work_dir) / "bundles"


def prepare(work_dir: str | os.PathLike, source: str | os.PathLike = BUNDLES) -> dict[str, Path]:
    """Copy every bundle into ``<work_dir>/bundles`` unless already there; name -> copy."""
    target = bundles_dir(work_dir)
    target.mkdir(parents=True, exist_ok=True)
    copies = {}
    for name in BUNDLE_NAMES:
        copy = target / name
        if not (copy / MODEL_FILE).is_file():
            partial = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target))
            shutil.copytree(Path(source) / name, partial / name, ignore=_IGNORE)
            if copy.exists():
                shutil.rmtree(copy)  # a copy without its model is an interrupted one
            os.replace(partial / name, copy)
            shutil.rmtree(partial)
        copies[name] = copy
    return copies


def model_file(bundle_dir: str | os.PathLike) -> Path:
    return Path(bundle_dir) / MODEL_FILE


def inference_config(bundle_dir: str | os.PathLike):
    """The bundle's ``inference.yaml`` as a MONAI ``ConfigParser``, rooted at the copy.

    Only the pieces the server uses are ever parsed (network, preprocessing, inferer,
    postprocessing); the dataset and the writers of the command line are not.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_dir) / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle_dir)
    parser["device"] = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
    return parser


def load_network(bundle_dir: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The bundle's inference network with the copy's current weights, in eval mode."""
    network = inference_config(bundle_dir).get_parsed_content("network_def").to(device)
    network.load_state_dict(torch.load(model_file(bundle_dir), map_location=device, weights_only=True))
    return network.eval()
