"""Batches of 2D inference inputs that MONAI can stack: one reader's files together.

Inference pads every image to the network window (as the sliding window would), so
images of any size stack into one network call of ``batch_size``. What cannot be
stacked is their metadata: MONAI collates each batch's metadata key by key, and the
readers disagree on the keys (a PNG carries ``format``/``mode``, a DICOM its tags, a
NIfTI its header fields; two DICOMs may carry different tags). PIL-read files (PNG,
JPEG, TIFF) share one set of keys, so they are batched together; every DICOM and NIfTI
file is a batch of its own. Used as the DataLoader's ``batch_sampler``.
"""

from __future__ import annotations

from xray_seg.shared.image_checks import image_suffix

# Suffixes that MONAI's PILReader reads (the bundles' reader): their metadata keys agree.
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def reader_batches(items: list[dict], batch_size: int, key: str = "image") -> list[list[int]]:
    """Indices of ``items`` in order, cut into batches of up to ``batch_size`` PIL-read files;
    any other file is a batch of one. Every index appears exactly once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batches: list[list[int]] = []
    current: list[int] = []
    for index, item in enumerate(items):
        if image_suffix(item[key]) in PIL_SUFFIXES:
            current.append(index)
            if len(current) == batch_size:
                batches.append(current)
                current = []
        else:
            batches.append([index])
    if current:
        batches.append(current)
    return batches
