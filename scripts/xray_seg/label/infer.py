"""MONAI Label infer tasks for the three bundles (built on ``BasicInferTask``).

``BundleInferTask`` does not fit these bundles: it keeps the command line's writers
(files in the bundle's folders on every request), returns the 2D prediction with its
channel axis and as float, and loads a whole volume with its class scores. Here the
network, pre-processing, inferer and post-processing still come from each bundle's
``inference.yaml`` (the app's copy), minus the file writers; ``BasicInferTask`` loads
the copy's ``models/model.pt`` and reloads it when a fine-tune replaces it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from xray_seg.label import workspace
from xray_seg.label.images import suffix
from xray_seg.label.outputs import ChestResultd, write_label_png
from xray_seg.tomography.inference import segment_volume
from xray_seg.tomography.volume_io import VolumeError, output_path

logger = logging.getLogger(__name__)


def bad_input(image: str, problem: object) -> MONAILabelException:
    return MONAILabelException(MONAILabelError.INVALID_INPUT, f"{Path(str(image)).name}: {problem}")


class _BundleTask(BasicInferTask):
    def __init__(self, model: str, bundle_dir: Path) -> None:
        self.model, self.bundle_dir = model, Path(bundle_dir)
        self.parser = workspace.inference_config(bundle_dir)
        super().__init__(
            path=str(workspace.model_file(bundle_dir)),
            network=self.parser.get_parsed_content("network_def"),
            type=InferType.SEGMENTATION,
            labels=dict(workspace.LABELS[model]),
            dimension=workspace.DIMENSION[model],
            description=workspace.DESCRIPTION[model],
        )

    def inferer(self, data=None):
        return self.parser.get_parsed_content("inferer")


class ChestInfer(_BundleTask):
    """cxr_lungs / cxr_anatomy: a PNG label map of the input's height and width (uint8,
    0 background) and, in the result JSON, the measurements (``outputs.ChestResultd``)."""

    def __init__(self, model: str, bundle_dir: Path) -> None:
        super().__init__(model, bundle_dir)
        post = self.parser["postprocessing"]["transforms"]
        # The command line's writers (SaveMaskd, SaveOverlayd, SaveAnatomyd) write files: drop them.
        self.parser["postprocessing"]["transforms"] = [
            t for t in post if not (isinstance(t, dict) and "Save" in str(t.get("_target_", "")))
        ]

    def pre_transforms(self, data=None):
        return list(self.parser.get_parsed_content("preprocessing").transforms)

    def run_pre_transforms(self, data, transforms):
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as e:  # an unreadable or non-2D upload; MONAI wraps the reader's error
            raise bad_input(data.get("image"), f"cannot be read as a 2D radiograph ({_first_line(e)})") from None

    def post_transforms(self, data=None):
        return [*self.parser.get_parsed_content("postprocessing").transforms, ChestResultd(self.model)]

    def writer(self, data, extension=None, dtype=None):
        return write_label_png(data["pred"]), dict(data["result"])


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[-1][:300]


class PhasesFromOne:
    """Wraps the bundle's inferer so that argmax gives class index + 1: a constant
    -inf score is put in front of the classes, so label 0 never wins and every phase,
    pores included, is a segment (1 pores, 2 zirconia, 3 nickel)."""

    def __init__(self, inferer) -> None:
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        scores = self.inferer(inputs, network)
        never = torch.full_like(scores[:, :1], -torch.inf)
        return torch.cat([never, scores], dim=1)


class TomographyInfer(_BundleTask):
    """xray_tomography: phase labels through ``segment_volume``, slab by slab, the same
    code as the command line (voxels = the command line's + 1), written in the input's
    format with its shape, spacing, origin and direction."""

    def pre_transforms(self, data=None):
        return []  # segment_volume reads and scales the volume itself, slab by slab

    def post_transforms(self, data=None):
        return []

    def __call__(self, request, callbacks=None):
        begin = time.time()
        image = str(request.get("image"))
        device = name_to_device(request.get("device", "cuda"))
        if not os.path.isfile(image):
            raise bad_input(image, "not a volume file (send one NIfTI, NRRD, MHA or TIFF file)")
        ext = suffix(output_path(image, tempfile.gettempdir(), "_seg"))
        fd, out = tempfile.mkstemp(prefix="xray-seg-", suffix=ext)
        os.close(fd)
        settings = {k: self.parser.get_parsed_content(k) for k in ("slab_depth", "slab_voxels", "halo")}
        try:
            network = self._get_network(device, request)
            segment_volume(
                image, out, network, PhasesFromOne(self.inferer()),
                lower=self.parser.get_parsed_content("intensity_lower"),
                upper=self.parser.get_parsed_content("intensity_upper"),
                progress=False, **settings,
            )
        except VolumeError as e:
            os.unlink(out) if os.path.exists(out) else None
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(e)) from None
        except BaseException:
            os.unlink(out) if os.path.exists(out) else None
            raise
        total = round(time.time() - begin, 2)
        logger.info("xray_tomography: %s segmented in %.2f s", Path(image).name, total)
        return out, {"label_names": self.labels, "latencies": {"total": total}}
