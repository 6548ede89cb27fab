"""Test-time-augmentation disagreement: how unsure a model is about an image.

The image goes through the network several times, each time transformed in a way the
model should not care about, and the predictions are mapped back; the score is the mean
(over pixels and classes) standard deviation of the class probabilities across those
passes. A model that is sure gives the same answer every time (score near 0).

- 2D radiographs: intensity gamma 0.8 and 1.25 and shifts of 8 pixels left/right/up/down
  (no flips: left and right are separate structures, and radiographs are read in a
  fixed orientation);
- tomography volumes: flips along z, y and x (the training augmentation: the material
  has no preferred orientation), on a central block of at most ``BLOCK`` voxels so that
  scoring stays cheap whatever the volume's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

Augmentation = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
SHIFT = 8
BLOCK = (48, 128, 128)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def augmentations_2d() -> list[Augmentation]:
    augs: list[Augmentation] = [(_identity, _identity)]
    for gamma in (0.8, 1.25):
        augs.append((lambda x, g=gamma: x.clamp(min=0) ** g, _identity))
    for dims, shift in (((-2,), SHIFT), ((-2,), -SHIFT), ((-1,), SHIFT), ((-1,), -SHIFT)):
        augs.append((lambda x, d=dims, s=shift: torch.roll(x, s, d), lambda y, d=dims, s=shift: torch.roll(y, -s, d)))
    return augs


def augmentations_3d() -> list[Augmentation]:
    augs: list[Augmentation] = [(_identity, _identity)]
    for axis in (-3, -2, -1):
        flip = lambda x, a=axis: torch.flip(x, (a,))  # noqa: E731 (its own inverse)
        augs.append((flip, flip))
    return augs


@torch.no_grad()
def disagreement(network: torch.nn.Module, inputs: torch.Tensor, inferer: Callable, augmentations: Sequence[Augmentation],
                 sigmoid: bool = False) -> float:
    """Mean standard deviation of the class probabilities over ``augmentations`` of ``inputs`` (1, 1, ...)."""
    network.eval()
    probs = []
    for forward, inverse in augmentations:
        scores = inverse(inferer(forward(inputs), network))
        probs.append(torch.sigmoid(scores) if sigmoid else torch.softmax(scores, dim=1))
    return float(torch.stack(probs).std(dim=0).mean())


def central_block(shape: Sequence[int], block: Sequence[int] = BLOCK) -> tuple[slice, ...]:
    """The central ``block`` (clipped to ``shape``) of a (z, y, x) volume."""
    return tuple(slice(max(0, (n - b) // 2), max(0, (n - b) // 2) + min(n, b)) for n, b in zip(shape, block))


def volume_block(path: str | os.PathLike, lower: float = 0.5, upper: float = 99.5) -> torch.Tensor:
    """The central block of a volume, scaled as the tomography bundle scales it, as (1, 1, z, y, x)."""
    from xray_seg.tomography.inference import volume_range
    from xray_seg.tomography.transforms import scale
    from xray_seg.tomography.volume_io import SlabReader

    with SlabReader(path) as reader:
        lo, hi = volume_range(reader, lower, upper)
        zs, ys, xs = central_block(reader.meta.shape)
        block = reader.read(zs.start, zs.stop)[:, ys, xs]
    return scale(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)), lo, hi)[None, None]
