"""MONAI transforms for tomography volumes that MONAI does not ship.

- ``LoadVolumed`` reads volumes through ``xray_seg.tomography.volume_io``: slice folders, TIFF
  stacks, DICOM series and medical formats, and a slab of them (the ``slices``
  range a slab manifest gives). MONAI's ``LoadImaged`` reads none of slice folders
  or slab ranges.
- ``RecordIntensityRanged`` / ``ScaleFromRanged`` normalise 8/16-bit or float
  intensities on robust percentiles of the whole (clean) volume, split in two so
  that noise can be added in raw detector units in between: MONAI's
  ``ScaleIntensityRangePercentilesd`` would take its percentiles from the noisy
  patch, changing the scaling with the noise.
- ``ZSlices`` picks the z-slices of a (C, z, y, x) volume that reports show.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from xray_seg.tomography.volume_io import VolumeError, check_same_shape, read_volume

# Voxels sampled for the percentiles: enough for stable 0.5/99.5 percentiles, few
# enough that a 1024^3 volume costs nothing.
_RANGE_SAMPLES = 2_000_000


def intensity_range(volume: np.ndarray | torch.Tensor, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """Robust (lower, upper) percentiles of a volume, from an even subsample of its voxels."""
    flat = torch.as_tensor(volume).reshape(-1)
    step = max(1, flat.numel() // _RANGE_SAMPLES)
    sample = flat[::step].float()
    sample = sample[torch.isfinite(sample)]
    if sample.numel() == 0:
        raise ValueError("the volume has no finite voxels")
    # numpy's partial sort, not torch.quantile's full sort of 2 million voxels (0.2 s on
    # the README's CPU); both interpolate linearly, so the values are the same.
    lo, hi = np.percentile(sample.double().numpy(), [lower, upper]).tolist()
    if hi <= lo:  # constant volume: avoid dividing by zero
        hi = lo + 1.0
    return float(lo), float(hi)


def scale(volume: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map [lo, hi] to [0, 1] without clipping, so noise and outliers keep their sign."""
    return (volume.float() - lo) / (hi - lo)


def _affine(spacing: Sequence[float]) -> torch.Tensor:
    # Arrays are (z, y, x); the affine only carries voxel sizes for MONAI's metrics.
    return torch.diag(torch.tensor([*map(float, spacing), 1.0], dtype=torch.float64))


class LoadVolumed(MapTransform):
    """Read each key's volume (a slab of it when the item has ``slices``) as a (1, z, y, x) MetaTensor.

    Images become float32; labels keep integer values. When ``label_values`` is
    given, the label's voxel values must be among them (for example 0/128/255)
    and are mapped to 0, 1, 2, ... in that order.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = "label",
        label_values: Sequence[int] | None = None,
        slices_key: str = "slices",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.label_values = None if label_values is None else [int(v) for v in label_values]
        self.slices_key = slices_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        slices = d.get(self.slices_key)
        metas = {}
        for key in self.key_iterator(d):
            array, meta = read_volume(d[key], slices=None if slices is None else tuple(slices))
            metas[key] = meta
            is_label = key == self.label_key
            if is_label and self.label_values is not None:
                array = self._map_labels(array, str(d[key]))
            tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
            tensor = tensor.long() if is_label else tensor.float()
            # The z range read, [0, depth] for a whole volume: never None, which MONAI's
            # collation cannot batch (several whole volumes in one manifest).
            z_range = [0, meta.shape[0]] if slices is None else [int(s) for s in slices]
            d[key] = MetaTensor(
                tensor,
                affine=_affine(meta.spacing),
                meta={"filename_or_obj": str(d[key]), "spacing": list(meta.spacing), "slices": z_range},
            )
        if self.label_key in metas and len(metas) > 1:
            image_meta = next(m for k, m in metas.items() if k != self.label_key)
            check_same_shape(image_meta, metas[self.label_key])  # names both files
        return d

    def _map_labels(self, array: np.ndarray, name: str) -> np.ndarray:
        values = np.unique(array)
        unknown = sorted(set(values.tolist()) - set(self.label_values))
        if unknown:
            raise VolumeError(f"label volume {name} has values {unknown[:10]} outside the expected {self.label_values}")
        lookup = np.zeros(int(values.max()) + 1, dtype=np.uint8)
        for index, value in enumerate(self.label_values):
            if value < lookup.size:
                lookup[value] = index
        return lookup[array]


class RecordIntensityRanged(MapTransform):
    """Store the robust intensity range of each key's volume as ``<key>_range`` for ``ScaleFromRanged``."""

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5) -> None:
        super().__init__(keys)
        self.lower, self.upper = lower, upper

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_range"] = intensity_range(d[key], self.lower, self.upper)
        return d


class ScaleFromRanged(MapTransform):
    """Scale each key by the range ``RecordIntensityRanged`` stored: [lo, hi] -> [0, 1]."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            lo, hi = d[f"{key}_range"]
            d[key] = scale(d[key], lo, hi)
        return d


class ZSlices:
    """(C, z, y, x) volume -> ``n`` evenly spaced (C, y, x) z-slices, the planes tomography is viewed in."""

    def __init__(self, n: int = 1) -> None:
        self.n = n

    def __call__(self, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
        arr = x.detach().float().cpu().numpy()
        depth = arr.shape[1]
        picks = np.unique(np.linspace(0, depth - 1, self.n + 2)[1:-1].round().astype(int)) if self.n > 1 else [depth // 2]
        return [(f"z={z}", arr[:, z]) for z in picks]
