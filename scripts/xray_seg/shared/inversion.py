"""Undo the 2D bundles' spatial preprocessing (``Resized``, then ``SpatialPadd``) on the predictions.

MONAI's ``Invertd`` does this for any preprocessing: for each key it copies the image's
transform stack onto the prediction, flattens the preprocessing ``Compose`` again,
deep-copies metadata and inverts every step through ``MetaTensor`` bookkeeping. For a
512 x 512 radiograph that is 10 ms of CPU, most of it Python holding the GIL (py-spy),
which in the 2D inference also stalls the thread that runs the network (the README's
"Inference throughput" section). ``InvertSpatiald`` performs the same two inverse
operations on plain tensors, which MONAI offers no cheaper way to do:

- ``SpatialPad`` is undone by the crop MONAI's ``Pad.inverse`` uses;
- ``Resize`` by the interpolation of MONAI's ``Resize.inverse_transform``: back to the
  recorded size with the recorded mode, ``align_corners`` and dtype, no anti-aliasing
  (``torch.nn.functional.interpolate``, as MONAI's ``resize`` calls it), float32 out;

and the affine (and pixdim) are updated with MONAI's own matrices (``create_translate``,
``scale_affine``, ``to_affine_nd``) in the same order and precision. Values and
metadata equal ``Invertd``'s (tests/shared/test_inversion.py compares them on PNG and
NIfTI inputs of several shapes). Any other operation on the image's stack is refused
with its name: a config that adds one must use ``Invertd``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing, to_affine_nd
from monai.transforms import MapTransform
from monai.transforms.utils import create_translate, resolves_modes, scale_affine
from monai.utils import MetaKeys, TraceKeys

UNDONE = ("SpatialPad", "Resize")


class InvertSpatiald(MapTransform):
    """Bring ``keys`` back to the geometry of the input that ``orig_key`` was preprocessed from.

    Use it where ``Invertd(keys, transform=preprocessing, orig_keys=orig_key,
    nearest_interp=False)`` would stand, when the only invertible steps of the
    preprocessing are ``Resized`` and ``SpatialPadd``. Each key gets the inverted data as a
    float32 ``MetaTensor`` carrying the original image's metadata with the inverted affine.
    """

    def __init__(self, keys: KeysCollection, orig_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orig_key = orig_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        image = d[self.orig_key]
        if not isinstance(image, MetaTensor):
            raise ValueError(f"InvertSpatiald: {self.orig_key} carries no transform record (not a MetaTensor)")
        if image.pending_operations:
            raise ValueError("InvertSpatiald: the preprocessing left lazy (pending) operations; use Invertd")
        operations = list(reversed(image.applied_operations))
        for op in operations:
            _check(op)
        meta = _inverted_meta(image, operations)
        for key in self.key_iterator(d):
            x = d[key]
            x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            for op in operations:
                x = _undo(x, op)
            d[key] = MetaTensor(x, meta=_own_copy(meta))  # MetaTensor keeps the dict it is given
        return d


def _check(op: Mapping) -> None:
    """Refuse, before anything is changed, what the two inverses below do not cover."""
    name, info = op[TraceKeys.CLASS_NAME], op[TraceKeys.EXTRA_INFO]
    if name not in UNDONE:
        raise ValueError(f"InvertSpatiald undoes {' and '.join(UNDONE)} only, "
                         f"and the preprocessing applied {name}: use Invertd")
    if name == "SpatialPad" and any(info["padded"][0]):
        raise ValueError("InvertSpatiald: the channels were padded; use Invertd")
    if name == "Resize" and info.get("new_dim", 0):  # trailing spatial dimensions that Invertd would squeeze
        raise ValueError("InvertSpatiald: the resize added spatial dimensions; use Invertd")


def _undo(x: torch.Tensor, op: Mapping) -> torch.Tensor:
    info = op[TraceKeys.EXTRA_INFO]
    if op[TraceKeys.CLASS_NAME] == "SpatialPad":
        padded = info["padded"]
        return x[(slice(None),) + tuple(slice(a, n - b) for n, (a, b) in zip(x.shape[1:], padded[1:]))]
    size = tuple(int(n) for n in op[TraceKeys.ORIG_SIZE])
    dtype = getattr(torch, info["dtype"])
    if tuple(x.shape[1:]) == size:
        return x.to(torch.float32)
    align = None if info["align_corners"] == TraceKeys.NONE else info["align_corners"]
    _, mode, _, _ = resolves_modes(info["mode"], torch_interpolate_spatial_nd=x.ndim - 1)  # as MONAI's resize
    resized = torch.nn.functional.interpolate(x.to(dtype).unsqueeze(0), size=size, mode=mode, align_corners=align)
    return resized.squeeze(0).to(torch.float32)


def _inverted_meta(image: MetaTensor, operations: list[Mapping]) -> dict:
    """The image's metadata with the affine that MONAI's inverse of ``operations`` would give."""
    meta = dict(image.meta)
    affine = torch.as_tensor(image.affine, dtype=torch.float64)
    rank = affine.shape[-1] - 1
    shape = tuple(int(n) for n in image.shape[1:])
    for op in operations:
        info = op[TraceKeys.EXTRA_INFO]
        if op[TraceKeys.CLASS_NAME] == "SpatialPad":
            starts = [a for a, _ in info["padded"][1:]]
            step = create_translate(len(shape), starts)
            shape = tuple(n - a - b for n, (a, b) in zip(shape, info["padded"][1:]))
        else:
            size = tuple(int(n) for n in op[TraceKeys.ORIG_SIZE])
            align = None if info["align_corners"] == TraceKeys.NONE else info["align_corners"]
            step = scale_affine(shape, size, align_corners=bool(align))
            shape = size
        affine = affine @ to_affine_nd(rank, torch.as_tensor(step, dtype=torch.float64), dtype=torch.float64)
    meta[MetaKeys.AFFINE] = affine
    if MetaKeys.PIXDIM in meta:
        meta[MetaKeys.PIXDIM] = np.array(meta[MetaKeys.PIXDIM], copy=True)
        spacing = affine_to_spacing(affine)
        meta[MetaKeys.PIXDIM][1 : 1 + len(spacing)] = spacing
    return meta


def _own_copy(meta: dict) -> dict:
    """A copy whose mutable entries (the affine, pixdim; MONAI updates pixdim in place) are not shared."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v.copy() if isinstance(v, np.ndarray) else v
            for k, v in meta.items()}
