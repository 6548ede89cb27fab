"""Augmentation for what differs between radiography sites that MONAI has no transform for.

The rest of the site-robustness augmentation (zoom-out with black borders, shifts,
gamma, histogram changes, blur, sharpening, noise, burnt-in markers) is MONAI's own
and is declared in ``bundle/cxr_lungs/configs/train.yaml``.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform


class RandCollimationd(RandomizableTransform, MapTransform):
    """Collimator shutters: straight bands along the image edges hidden by a flat value.

    Sites collimate differently: one crops tight, another leaves unexposed bands
    that appear white, or masks them black in post-processing. With probability
    ``prob``, each edge independently (probability 1/2) gets a band up to
    ``max_fraction`` of the image's size, filled with 0 (black) or 1 (white) on the
    [0, 1]-normalised image. Labels under a band become background: nothing hidden
    there can be segmented. MONAI's ``RandCoarseDropoutd`` places holes anywhere,
    not flush with the edges, so it cannot model shutters.

    Expects channel-first 2D tensors (C, X, Y) for ``image_key`` and ``label_key``.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", prob: float = 0.3,
                 max_fraction: float = 0.12, allow_missing_keys: bool = True) -> None:
        MapTransform.__init__(self, [image_key, label_key], allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key = image_key, label_key
        self.max_fraction = max_fraction
        self._bands: list[tuple[int, int, float]] = []  # (axis, signed width, fill)

    def randomize(self, shape: tuple[int, int]) -> None:
        super().randomize(None)
        self._bands = []
        if not self._do_transform:
            return
        for axis in (0, 1):
            for side in (1, -1):  # 1: band at the start of the axis, -1: at its end
                if self.R.rand() < 0.5:
                    width = int(self.R.uniform(0.02, self.max_fraction) * shape[axis])
                    self._bands.append((axis, side * max(width, 1), float(self.R.choice([0.0, 1.0]))))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(tuple(d[self.image_key].shape[1:3]))
        for axis, width, fill in self._bands:
            band = slice(0, width) if width > 0 else slice(width, None)
            index = (slice(None), band) if axis == 0 else (slice(None), slice(None), band)
            for key in self.key_iterator(d):
                d[key] = d[key].clone() if isinstance(d[key], torch.Tensor) else np.array(d[key])
                d[key][index] = fill if key == self.image_key else 0
        return d
