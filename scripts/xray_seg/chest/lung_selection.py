"""Keep the lungs by anatomy, not by size: one lung region on each side of the body's midline.

The shipped post-processing kept "the two largest components". On radiographs from
other sites the dark air beside the patient's body is sometimes segmented as lung;
when that region is larger than a real lung, "two largest" keeps it and drops the
lung. Here the lungs are chosen with what is known of a frontal chest radiograph:

- the body is the bright region of the image (soft tissue and bone), each row
  filled from its first to its last bright pixel, so the dark lungs are inside and
  the air beside the body is not: ``body_mask``; a lung lies inside it;
- the body's midline separates the patient's right lung (image left, small x in
  MONAI's (W, H) layout) from the left lung;
- each side keeps its largest lung component, unless that one lies lateral to and
  beside another lung-sized component of the same side (their columns overlap by at
  most ``MAX_SIDE_BY_SIDE_OVERLAP``) and is darker than it: then it is
  the air beside the body (inside a bright film frame the body mask cannot tell),
  and the lung is the medial one, next to the mediastinum;
- everything else is a false positive.

What was removed is recorded (``LungSelection``) for the quality check
(``xray_seg.chest.quality``). Arrays are indexed [x, y] as MONAI's ``PILReader``
loads them (first axis = image columns); the functions work on one 2D plane.
MONAI has no transform for this (``KeepLargestConnectedComponent`` knows only sizes).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu

# The body mask is found on a copy at most this many pixels on its longest side:
# anatomy at this scale is plenty for "inside or outside the body", and it keeps the
# cost at a few ms whatever the input resolution.
BODY_WORKING_SIDE = 128
# A body mask covering less of the image than this is not believed (a blank image,
# a photo of text): selection then goes without it and says so. (An image filled by
# the body, as many JSRT images are, is believed.)
BODY_FRACTION_RANGE = (0.15, 1.0)
# Bright pieces smaller than this share of the image are not body (markers, text).
MIN_BODY_PIECE = 0.01
# A lung component with more of its area than this outside the body is cut back to its
# largest connected part inside the body (ground-truth lungs have at most a few % outside
# the body mask: tests/chest/test_quality.py)...
MAX_OUTSIDE_SHARE = 0.1
# ... and dropped as air beside the body unless that part is at least this share of the
# image (one lung is about 4 % or more).
MIN_CLIPPED_AREA = 0.01
# A component with at least this share of its area on each side of the midline is
# recorded as lungs merged across the mediastinum.
MERGED_SHARE = 0.2
# Values of the side map that ``select_lungs`` returns.
RIGHT, LEFT = 1, 2
# Two components of one side whose column ranges overlap by at most this share of the
# narrower one lie side by side (lateral and medial), not one above the other (a lung
# split by an opacity).
MAX_SIDE_BY_SIDE_OVERLAP = 0.2
# 8-connectivity, as MONAI's KeepLargestConnectedComponent uses by default (connectivity=None).
_STRUCTURE = np.ones((3, 3), bool)


@dataclass
class LungSelection:
    """What ``select_lungs`` did to one prediction, for the quality check."""

    body_found: bool          # the body mask was believed and used
    body_fraction: float      # body area / image area (0 when no body was found)
    midline_x: float          # x of the midline used (body centroid, else the image centre)
    components: int           # lung components in the raw prediction
    raw_pixels: int           # lung pixels before selection
    kept_pixels: int          # lung pixels after selection
    removed_outside_body: int  # pixels removed because they lay outside the body
    merged: bool              # a kept component spans both sides of the midline

    @property
    def removed_fraction(self) -> float:
        return 0.0 if self.raw_pixels == 0 else 1.0 - self.kept_pixels / self.raw_pixels


def body_mask(image: np.ndarray) -> np.ndarray | None:
    """(W, H) intensity image -> boolean body mask of the same shape, or None if none is believable.

    Smoothing + Otsu threshold (tissue vs air and lung), closing of thin gaps, the
    large bright pieces, then each row filled from its first to its last body pixel.
    Returns None for an image without contrast or when the mask's share of the image
    is below ``BODY_FRACTION_RANGE``.
    """
    img = np.asarray(image, dtype=np.float32)
    step = max(1, math.ceil(max(img.shape) / BODY_WORKING_SIDE))
    if step > 1:  # block means: no aliasing of fine texture
        padded = np.pad(img, [(0, -n % step) for n in img.shape], mode="edge")
        # Sums of strided views: numpy's mean over the axes of a (W/s, s, H/s, s) reshape
        # is a strided reduction, ten times slower at 512 x 512 (1.6 ms against 0.16 ms).
        rows = sum(padded[i::step] for i in range(step))
        small = sum(rows[:, j::step] for j in range(step)) / np.float32(step * step)
    else:
        small = img
    small = ndi.gaussian_filter(small, sigma=1.0)
    if not np.isfinite(small).all() or float(small.max() - small.min()) < 1e-3:
        return None
    bright = small > threshold_multiotsu(small, classes=3)[0]
    # Closing over ~3% of the image bridges a thin chest wall that the threshold broke.
    radius = max(1, round(0.015 * max(small.shape)))
    bright = ndi.binary_closing(np.pad(bright, radius), structure=_disk(radius))[radius:-radius, radius:-radius]
    labels, n = ndi.label(bright, structure=_STRUCTURE)
    if n == 0:
        return None
    # The lungs split the bright region into pieces (chest walls, mediastinum); the body
    # is all the large ones. Small ones are markers and text in the air ("R", "PA ERECT").
    sizes = np.bincount(labels.ravel())[1:]
    large = np.isin(labels, 1 + np.flatnonzero(sizes >= MIN_BODY_PIECE * labels.size))
    # Each row of the body spans from its first to its last bright pixel: the lungs are
    # dark, and at the apices they open to the dark air above the shoulders, so filling
    # holes would leave them out; air beside the body stays outside the span.
    xs = np.arange(large.shape[0])[:, None]
    any_row = large.any(axis=0)
    first = np.where(any_row, large.argmax(axis=0), large.shape[0])
    last = np.where(any_row, large.shape[0] - 1 - large[::-1].argmax(axis=0), -1)
    body = (xs >= first[None, :]) & (xs <= last[None, :])
    if not BODY_FRACTION_RANGE[0] <= float(body.mean()) <= BODY_FRACTION_RANGE[1]:
        return None
    # Back to full size, each block's value repeated (nearest neighbour).
    return np.repeat(np.repeat(body, step, axis=0), step, axis=1)[: img.shape[0], : img.shape[1]]


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False if empty)."""
    labels, n = ndi.label(mask, structure=_STRUCTURE)
    if n <= 1:
        return labels > 0
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _disk(radius: int) -> np.ndarray:
    x, y = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def select_lungs(mask: np.ndarray, body: np.ndarray | None,
                 image: np.ndarray | None = None) -> tuple[np.ndarray, LungSelection]:
    """(W, H) binary lung mask and body mask (``body_mask`` of the image) -> (sides, what was done).

    Components partly outside the body are cut back to their largest part inside it (a
    lung joined to the air beside the body), or dropped when that part is not lung-sized
    (the air alone); of the rest, each side of the
    midline keeps its largest (a component's side is that of its centroid). With the
    ``image``, a largest component that lies lateral to and beside another lung-sized one
    of its side and is darker than it gives way to that one (``_medial_lung``). Without
    a body (None), every component counts as inside and the midline is the image's centre.
    ``sides`` is a uint8 (W, H) map: 0 removed or background, ``RIGHT`` the lung kept on
    the image's left (the patient's right), ``LEFT`` the one on the image's right;
    ``sides > 0`` is the kept mask.
    """
    mask = np.asarray(mask) > 0
    if body is not None:
        columns = body.sum(axis=1, dtype=np.int64)
        midline = float(np.arange(mask.shape[0]) @ columns / max(int(columns.sum()), 1))
    else:
        midline = (mask.shape[0] - 1) / 2
    labels, n = ndi.label(mask, structure=_STRUCTURE)
    sides = np.zeros(mask.shape, np.uint8)
    removed_outside = 0
    merged = False
    if n:
        # Each component measured inside its bounding box: a few ms at any image size.
        boxes = ndi.find_objects(labels)
        pieces = [labels[box] == i + 1 for i, box in enumerate(boxes)]
        raw_sizes = np.array([np.count_nonzero(p) for p in pieces], dtype=np.float64)
        outside = np.zeros(n, bool)
        if body is not None:
            for i, (box, piece) in enumerate(zip(boxes, pieces)):
                within = piece & body[box]
                if np.count_nonzero(within) >= (1 - MAX_OUTSIDE_SHARE) * raw_sizes[i]:
                    continue
                # Partly or mostly outside: air beside the body, alone or joined to a lung
                # (through the chest wall, at the apex). What lies inside the body stays if it
                # is lung-sized; the rest goes.
                part = _largest(within)
                if np.count_nonzero(part) >= MIN_CLIPPED_AREA * mask.size:
                    pieces[i] = part
                else:
                    outside[i] = True
        sizes = np.array([np.count_nonzero(p) for p in pieces], dtype=np.float64)
        sizes[outside] = 0
        removed_outside = int(raw_sizes.sum() - sizes.sum())
        centroid_x = np.array([box[0].start + np.arange(p.shape[0]) @ p.sum(axis=1) / max(size, 1)
                               for box, p, size in zip(boxes, pieces, sizes)])
        for value, side in ((RIGHT, centroid_x < midline), (LEFT, centroid_x >= midline)):
            candidates = np.flatnonzero(side & ~outside)
            if candidates.size:
                best = candidates[np.argmax(sizes[candidates])]
                if image is not None and candidates.size > 1:
                    big = candidates[sizes[candidates] >= MIN_CLIPPED_AREA * mask.size]
                    best = _medial_lung(best, big, boxes, pieces, sizes, image, medial_is_up=value == RIGHT)
                box, piece = boxes[best], pieces[best]
                sides[box][piece] = value
                split = max(0, math.ceil(midline) - box[0].start)
                left_share = float(np.count_nonzero(piece[:split])) / sizes[best]
                merged |= min(left_share, 1 - left_share) >= MERGED_SHARE
    kept_pixels = int(np.count_nonzero(sides))
    record = LungSelection(
        body_found=body is not None,
        body_fraction=float(body.mean()) if body is not None else 0.0,
        midline_x=midline,
        components=int(n),
        raw_pixels=int(mask.sum()),
        kept_pixels=kept_pixels,
        removed_outside_body=removed_outside,
        merged=merged,
    )
    return sides, record


def _medial_lung(best: int, others: np.ndarray, boxes: list, pieces: list, sizes: np.ndarray,
                 image: np.ndarray, medial_is_up: bool) -> int:
    """``best``, or the largest of the lung-sized ``others`` that lies medial to it, side by
    side, and is brighter: then ``best`` is the air beside the body, the darkest thing on a
    radiograph, which has no ribs or vessels over it. ``medial_is_up``: the midline is at
    larger x (the image's left side, the patient's right lung)."""
    def columns(i: int) -> tuple[int, int]:
        xs = np.flatnonzero(pieces[i].any(axis=1)) + boxes[i][0].start
        return int(xs[0]), int(xs[-1])

    def median(i: int) -> float:
        return float(np.median(image[boxes[i]][pieces[i]]))

    b0, b1 = columns(best)
    chosen = best
    for i in others:
        if i == best:
            continue
        c0, c1 = columns(i)
        medial = c0 > b0 and c1 > b1 if medial_is_up else c0 < b0 and c1 < b1
        overlap = max(0, min(b1, c1) - max(b0, c0) + 1) / min(b1 - b0 + 1, c1 - c0 + 1)
        if medial and overlap <= MAX_SIDE_BY_SIDE_OVERLAP and (chosen == best or sizes[i] > sizes[chosen]) \
                and median(i) > median(best):
            chosen = i
    return chosen


class SelectLungsd(MapTransform):
    """Replace a (1, W, H) 0/1 lung label map by its anatomically selected lungs (``select_lungs``).

    The image under ``image_key`` (same spatial size, e.g. after ``Invertd``) gives the
    body; the record of what was removed goes to ``record_key`` as a plain dict (with
    ``removed_fraction``), the body mask to ``body_key`` and the side map of
    ``select_lungs`` to ``sides_key``, for the quality check.
    The output keeps the input's type, dtype, device and meta.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        record_key: str = "lung_selection",
        body_key: str = "body_mask",
        sides_key: str = "lung_sides",
    ) -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.record_key = record_key
        self.body_key = body_key
        self.sides_key = sides_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        image = d.get(self.image_key)
        plane = _plane(image) if image is not None else None
        body = body_mask(plane) if plane is not None else None
        for key in self.key_iterator(d):
            pred = d[key]
            labels = _plane(pred)
            if plane is not None and plane.shape != labels.shape:
                raise ValueError(f"{self.image_key} {plane.shape} and {key} {labels.shape} differ in size")
            sides, record = select_lungs(labels, body, plane)
            if isinstance(pred, torch.Tensor):
                kept = torch.from_numpy(sides[None] > 0).to(device=pred.device, dtype=pred.dtype)
                # A new MetaTensor with the prediction's metadata: MetaTensor.clone() deep-copies it
                # and every in-place write goes through its bookkeeping, which holds the GIL.
                pred = MetaTensor(kept, meta=dict(pred.meta), applied_operations=list(pred.applied_operations)) \
                    if isinstance(pred, MetaTensor) else kept
            else:
                pred = (sides[None] > 0).astype(np.asarray(pred).dtype)
            d[key] = pred
            d[self.record_key] = {**asdict(record), "removed_fraction": record.removed_fraction}
            d[self.sides_key] = sides
            d[self.body_key] = body
        return d


def _plane(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, W, H) tensor or array -> (W, H) numpy array."""
    arr = x.as_subclass(torch.Tensor).detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise ValueError(f"expected a (1, W, H) plane, got shape {arr.shape}")
    return arr[0]
