"""MONAI transforms that MONAI itself does not provide, shared by the 2D bundles.

Everything else in the pipelines (loading, resizing, inversion, augmentation) is
MONAI's own and is declared in the bundle configs. Two MONAI transforms are subclassed
only to swap a slow CPU kernel for numpy's, with the same result (see their docstrings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import AsDiscrete, MapTransform, SaveImage
from monai.transforms import AsDiscreted as _MonaiAsDiscreted
from monai.transforms import ScaleIntensityRangePercentiles
from monai.transforms import ScaleIntensityRangePercentilesd as _MonaiScaleIntensityRangePercentilesd
from monai.utils import convert_to_dst_type
from PIL import Image

from xray_seg.shared.figures import RED, label_overlay, overlay, save_png
from xray_seg.shared.image_checks import image_stem
from xray_seg.shared.labelmaps import first_argmax

# PIL modes that already hold one grey value per pixel at full bit depth.
_GREY_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "F"}
# ITU-R 601 luma, the weights PIL uses for RGB -> L; applied here to non-PIL inputs.
_LUMA = (0.299, 0.587, 0.114)


def pil_to_grey(img: Image.Image) -> Image.Image:
    """Converter for MONAI's ``PILReader``: palette, RGB(A), LA and CMYK images to grey.

    MONAI would otherwise load a palette PNG as palette indices and RGB as three
    channels. 8/16-bit and float grey images are returned untouched, so no
    precision is lost before the robust intensity normalisation.
    """
    return img if img.mode in _GREY_MODES else img.convert("L")


class AsGrey2Dd(MapTransform):
    """Make channel-first images single-channel 2D: (1, H, W).

    DICOM and NIfTI radiographs often load as (C, H, W, 1); RGB images that did not
    come through ``pil_to_grey`` (RGB DICOM, TIFF) have 3 or 4 channels. Trailing
    singleton spatial dimensions are dropped and colour is reduced to luma
    (alpha ignored). Anything that is truly 3D is refused with the file named.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            while img.ndim > 3 and img.shape[-1] == 1:
                img = img[..., 0]
            if img.ndim != 3:
                raise ValueError(
                    f"{source_path(img)}: expected a 2D image, got spatial shape {tuple(img.shape[1:])}"
                )
            channels = img.shape[0]
            if channels in (3, 4):
                weights = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, 1, 1)
                img = (img[:3] * weights).sum(dim=0, keepdim=True)
            elif channels == 2:  # grey + alpha
                img = img[:1]
            elif channels != 1:
                raise ValueError(f"{source_path(img)}: cannot read a {channels}-channel image as a radiograph")
            d[key] = img
        return d


class _NumpyPercentiles(ScaleIntensityRangePercentiles):
    """MONAI's ``ScaleIntensityRangePercentiles`` with the percentiles taken by numpy.

    On a CPU tensor MONAI takes each percentile with ``torch.quantile``, which sorts the
    whole image (pytorch#64947): for a 512x512 radiograph more than ten times as long as
    ``np.percentile``'s partial sort, and the slowest step of the 2D inference (the
    throughput section of the README). The same linear interpolation, so the same
    thresholds (to float32 rounding). MONAI itself switches to numpy above 1e6
    elements only.
    """

    def _normalize(self, img):
        if isinstance(img, torch.Tensor) and img.device.type == "cpu":
            return super()._normalize(img.detach().numpy())
        return super()._normalize(img)


class ScaleIntensityRangePercentilesd(_MonaiScaleIntensityRangePercentilesd):
    """MONAI's ``ScaleIntensityRangePercentilesd`` (same arguments), computed with numpy
    percentiles on the CPU (``_NumpyPercentiles``): the slowest preprocessing step otherwise."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        s = self.scaler
        self.scaler = _NumpyPercentiles(s.lower, s.upper, s.b_min, s.b_max, s.clip, s.relative, s.channel_wise,
                                        s.dtype)


class _NumpyArgmax(AsDiscrete):
    """MONAI's ``AsDiscrete`` with ``argmax`` done in numpy for CPU tensors (``first_argmax``).

    Both return the first maximal index, so the labels are identical to MONAI's.
    Everything after the argmax is MONAI's.
    """

    def __call__(self, img, argmax=None, to_onehot=None, threshold=None, rounding=None):
        argmax = self.argmax if argmax is None else argmax
        if argmax and isinstance(img, torch.Tensor) and img.device.type == "cpu":
            dim, keepdim = self.kwargs.get("dim", 0), self.kwargs.get("keepdim", True)
            labels = torch.from_numpy(first_argmax(img.as_subclass(torch.Tensor).detach().numpy(), axis=dim))
            labels = labels.unsqueeze(dim) if keepdim else labels
            if all(x is None for x in (self.to_onehot if to_onehot is None else to_onehot,
                                       self.threshold if threshold is None else threshold,
                                       self.rounding if rounding is None else rounding)):
                # Nothing else to do: MONAI's last step only (the labels in img's type, with its
                # metadata), without a second pass through MetaTensor conversions.
                return convert_to_dst_type(labels, img, dtype=self.kwargs.get("dtype", torch.float))[0]
            img, argmax = convert_to_dst_type(labels, img, dtype=labels.dtype)[0], False
        return super().__call__(img, argmax, to_onehot, threshold, rounding)


class AsDiscreted(_MonaiAsDiscreted):
    """MONAI's ``AsDiscreted`` (same arguments), with a numpy argmax on the CPU (``_NumpyArgmax``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kwargs_of_converter = self.converter.kwargs
        self.converter = _NumpyArgmax()
        self.converter.kwargs = kwargs_of_converter


class BinariseMaskd(MapTransform):
    """Masks stored as 0/1, 0/255 or anti-aliased 0..255 become {0, 1} labels.

    The threshold is half the largest value the mask's dtype family uses (1 or
    255 or 65535), so 0/1 masks are not wiped out by a fixed 127 threshold.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = torch.as_tensor(d[key])
            peak = float(mask.max()) if mask.numel() else 0.0
            full_scale = 1.0 if peak <= 1 else 255.0 if peak <= 255 else 65535.0
            d[key] = (mask > full_scale / 2).to(torch.uint8)
        return d


def source_path(img: torch.Tensor) -> str:
    meta = getattr(img, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<image>"))


# The output format follows the input: NIfTI stays NIfTI (keeps the affine), every
# other 2D format is written as PNG (lossless, viewable).
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def output_suffix(source: str) -> str:
    return ".nii.gz" if source.lower().endswith(_NIFTI_SUFFIXES) else ".png"


class SaveMaskd(MapTransform):
    """Write a label map as ``<output_dir>/<input stem>_seg.<png|nii.gz>`` with MONAI's writers.

    ``SaveImaged`` takes one fixed extension; the inference contract wants the
    input's own format, so this picks a ``SaveImage`` per input suffix.
    """

    def __init__(self, keys: KeysCollection, output_dir: str, output_postfix: str = "seg") -> None:
        super().__init__(keys)
        common = dict(
            output_dir=output_dir,
            output_postfix=output_postfix,
            output_dtype=np.uint8,
            channel_dim=0,
            separate_folder=False,
            resample=False,
            print_log=False,
        )
        self._writers = {
            ".png": SaveImage(output_ext=".png", scale=None, **common),
            ".nii.gz": SaveImage(output_ext=".nii.gz", **common),
        }
        # zlib's fastest level: half the writing time of a 512 x 512 mask (2.3 ms against
        # 4.3 ms), files about 4 KB instead of 2.5 KB; still lossless.
        self._writers[".png"].set_options(write_kwargs={"compress_level": 1})

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            source = source_path(mask)
            # SaveImage drops the channel axis for good once it meets a spatial_shape as
            # long as the array (a DICOM's (W, H, 1)); give it the mask's own shape.
            meta = {
                **getattr(mask, "meta", {}),
                "spatial_shape": tuple(mask.shape[1:]),
                "original_channel_dim": "no_channel",  # the NIfTI writer needs it for 2D masks
            }
            array = MetaTensor(torch.as_tensor(mask).to(torch.uint8), meta=meta)
            self._writers[output_suffix(source)](array)
        return d


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<stem>_overlay.png``: the prediction drawn over the input.

    Expects the display image and the label map in MONAI's (1, W, H) layout, as
    loaded by ``PILReader``; transposes back to rows x columns for the PNG.
    """

    def __init__(self, keys: KeysCollection, image_key: str, output_dir: str, enabled: bool = True) -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.output_dir = Path(output_dir)
        self.enabled = enabled

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            labels = as_rows_cols(d[key])
            image = as_rows_cols(d[self.image_key])
            rgb = label_overlay(image, labels) if labels.max() > 1 else overlay(image, [(labels > 0, RED)])
            stem = image_stem(source_path(d[key]))
            save_png(self.output_dir / f"{stem}_overlay.png", rgb)
        return d


def as_rows_cols(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, W, H) channel-first MONAI array -> (H, W) numpy array for pictures."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr[0].T

