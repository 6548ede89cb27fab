"""Segment tomography volumes of any size, slab by slab.

MONAI's ``SlidingWindowInferer`` stitches windows with Gaussian blending, runs
the network on ``sw_device`` (the GPU when there is one) and keeps the volume and
the stitched output on ``device`` (the CPU). It still needs the whole volume and a
(classes, z, y, x) float output in memory. This module feeds it one slab of slices
at a time, with ``halo`` slices of context above and below that are inferred but
not kept, reads slabs incrementally (``xray_seg.tomography.volume_io.SlabReader``) and writes
label slabs as they are ready (``SlabWriter``). Peak memory then depends on the
slab and the slice size, not on the volume's depth.

With a halo of at least half the window depth, every kept voxel is predicted from
the same full windows as in a whole-volume pass; only the window grid and hence
the blending weights differ slightly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events, State
from tqdm import tqdm

from xray_seg.shared.errors import UserError, fail, or_exit
from xray_seg.shared.folders import visible_entries
from xray_seg.shared.integrity import non_finite_count, non_finite_message
from xray_seg.shared.labelmaps import first_argmax
from xray_seg.shared.machine import available_memory, gib
from xray_seg.shared.outputs import check_output_dir, prepare_output_dir
from xray_seg.tomography.transforms import intensity_range, scale
from xray_seg.tomography.volume_io import (
    SlabReader,
    SlabWriter,
    VolumeError,
    check_volume,
    is_volume_file,
    output_path,
    whole_read_bytes,
)

logger = logging.getLogger(__name__)

Inferer = Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]
# Slices sampled for the intensity percentiles of a volume too large to read whole.
_RANGE_SLICES = 32


def find_volumes(dataset_dir: str | os.PathLike) -> list[Path]:
    """The inputs in ``dataset_dir``: a volume file itself, or its volume files and
    sub-folders (slice stacks, DICOM series). A folder of slices is one volume."""
    root = Path(dataset_dir)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise VolumeError(f"{root} does not exist")
    entries = visible_entries(root, VolumeError)
    volumes = [p for p in entries if p.is_dir() or is_volume_file(p)]
    if not volumes and entries:
        return [root]  # the folder is itself a stack of slices or a DICOM series
    if not volumes:
        raise VolumeError(f"{root} holds no volumes (NIfTI, NRRD, MHA, TIFF, slice folders, DICOM series)")
    return volumes


def volume_range(reader: SlabReader, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """Robust intensity range of a whole volume from up to ``_RANGE_SLICES`` evenly spaced slices."""
    depth = reader.meta.shape[0]
    picks = np.unique(np.linspace(0, depth - 1, min(depth, _RANGE_SLICES)).round().astype(int))
    sample = np.stack([reader.read(int(z), int(z) + 1)[0] for z in picks])
    return intensity_range(sample, lower, upper)


# Voxels per slab (kept slices x slice area) when no slab depth is given: 144 slices of
# 1024 x 1024, whose inference peaks at a few GiB (model card: memory). Thinner slices
# get deeper slabs within the same memory, so fewer halos are inferred twice: a volume of
# 256 x 256 slices up to 2304 deep is one slab, with no halo at all.
SLAB_VOXELS = 144 * 1024 * 1024


def window_stride(inferer: object) -> int:
    """Depth step between sliding windows (MONAI's: int(roi * (1 - overlap)), at least 1),
    or 1 for an inferer without a window."""
    roi, overlap = getattr(inferer, "roi_size", None), getattr(inferer, "overlap", None)
    if not roi or overlap is None:
        return 1
    overlap = overlap[0] if isinstance(overlap, Sequence) else overlap
    return max(1, int(roi[0] * (1 - overlap)))


def auto_slab_depth(shape_zyx: Sequence[int], slab_voxels: int = SLAB_VOXELS, stride: int = 1) -> int:
    """Slices per slab for a volume of ``shape_zyx`` within ``slab_voxels`` voxels.

    Rounded down to a multiple of the window ``stride`` (when at least one stride fits), so
    that a slab and its halos tile with whole windows as the fixed 144 did; at least 1.
    """
    if slab_voxels < 1:
        raise ValueError(f"slab_voxels must be >= 1, got {slab_voxels}")
    depth = max(1, slab_voxels // max(1, int(shape_zyx[1]) * int(shape_zyx[2])))
    return depth - depth % stride if depth >= stride else depth


def slab_depth_for(shape_zyx: Sequence[int], inferer: object, slab_depth: int | None = None,
                   slab_voxels: int = SLAB_VOXELS) -> int:
    """The slices per slab that ``segment_volume`` uses: ``slab_depth`` when given, else
    as many as ``slab_voxels`` allows in whole window strides of ``inferer``."""
    return slab_depth if slab_depth is not None else auto_slab_depth(shape_zyx, slab_voxels, window_stride(inferer))


@torch.no_grad()
def segment_volume(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    network: torch.nn.Module,
    inferer: Inferer,
    slab_depth: int | None = None,
    halo: int = 16,
    lower: float = 0.5,
    upper: float = 99.5,
    progress: bool = True,
    slab_voxels: int = SLAB_VOXELS,
) -> Path:
    """Write the label volume (uint8, argmax over the network's channels) of ``path`` to ``out_path``.

    ``slab_depth``: slices kept per slab; None chooses it from ``slab_voxels`` and the
    slice size (``auto_slab_depth``).
    """
    if (slab_depth is not None and slab_depth < 1) or halo < 0:
        raise ValueError(f"slab_depth must be >= 1 and halo >= 0, got {slab_depth} and {halo}")
    network.eval()
    with SlabReader(path) as reader:
        depth = reader.meta.shape[0]
        slab_depth = slab_depth_for(reader.meta.shape, inferer, slab_depth, slab_voxels)
        lo, hi = volume_range(reader, lower, upper)
        starts = range(0, depth, slab_depth)
        with SlabWriter(out_path, reader.meta, dtype=np.uint8) as writer:
            for z0 in tqdm(starts, desc=Path(path).name, unit="slab", disable=not progress):
                z1 = min(depth, z0 + slab_depth)
                a0, a1 = max(0, z0 - halo), min(depth, z1 + halo)
                raw = reader.read(a0, a1)
                if bad := non_finite_count(raw):
                    # Inside the writer's ``with``: the temporary output is removed, nothing published.
                    raise VolumeError(f"{path}: {non_finite_message(bad, raw.size, f' of slices {a0}..{a1 - 1}')}")
                slab = scale(torch.from_numpy(raw.astype(np.float32)), lo, hi)
                del raw  # not needed while the network runs: the slab's memory peaks there
                logits = inferer(slab[None, None], network)
                del slab
                writer.write(z0, labels_of(logits[0, :, z0 - a0 : z1 - a0]))
                del logits
    return Path(out_path)


# Slices per argmax step in ``labels_of``: a bounded temporary, whatever the slab size.
_ARGMAX_SLICES = 8


def labels_of(scores: torch.Tensor) -> np.ndarray:
    """Argmax over the classes of (classes, z, y, x) scores as a uint8 (z, y, x) array.

    ``first_argmax`` a few slices at a time: ``torch.argmax`` (and ``np.argmax``) over the
    leading axis is a slow strided reduction, and an int64 result for the whole slab
    would be 8 bytes per voxel more at the slab's memory peak. All return the first
    maximal class, so the labels are the same.
    """
    scores = scores.detach()
    labels = np.empty(scores.shape[1:], dtype=np.uint8)
    for z in range(0, scores.shape[1], _ARGMAX_SLICES):
        chunk = scores[:, z : z + _ARGMAX_SLICES]
        chunk = chunk.float() if chunk.dtype == torch.bfloat16 else chunk  # numpy has no bfloat16
        labels[z : z + _ARGMAX_SLICES] = first_argmax(chunk.cpu().numpy())
    return labels


def _check_memory(reader: SlabReader) -> None:
    """Refuse a volume that must be read whole (not streamed) when it would not fit in memory."""
    need, free = whole_read_bytes(reader), available_memory()
    if need and free is not None and need > free:
        raise VolumeError(
            f"{reader.path}: {reader.meta.format} volume {'x'.join(map(str, reader.shape))} {reader.dtype.name} is "
            f"read whole (this format does not stream) and needs about {gib(need)}, but only {gib(free)} of memory "
            "is available; convert it to uncompressed .nii or a TIFF stack, which are read slab by slab"
        )


def _check_output_names(volumes: list[Path]) -> None:
    """Outputs are named by input stem: x.mha and x.mhd (or a DICOM folder x and x.nii.gz) would collide."""
    by_name: dict[str, list[str]] = {}
    for path in volumes:
        by_name.setdefault(output_path(path, ".").name, []).append(path.name)
    clashes = [names for names in by_name.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(", ".join(names) for names in clashes)
        raise VolumeError(f"{volumes[0].parent}: inputs whose outputs would have the same name: {listed}")


def volume_items(dataset_dir: str, output_dir: str | None = None) -> list[dict]:
    """``{"image": path}`` for every volume of ``dataset_dir``, each opened and checked
    up front (readable, whole gzip stream, memory for formats read whole, distinct
    output names; and ``output_dir`` writable when given), so a bad file stops the
    run (one ``ERROR:`` line, exit status 2) before anything is written."""
    if not dataset_dir:
        fail("no input folder: pass --dataset_dir IN (volumes, slice folders or DICOM series to segment)")

    def scan() -> list[Path]:
        if output_dir is not None:
            check_output_dir(output_dir)
        volumes = find_volumes(dataset_dir)
        _check_output_names(volumes)
        for path in volumes:
            with check_volume(path) as reader:
                _check_memory(reader)
        return volumes

    return [{"image": str(path)} for path in or_exit(scan, (VolumeError, UserError))]


class VolumeSegmenter(Engine):
    """An ignite engine whose iterations each segment one volume with ``segment_volume``.

    MONAI's ``SupervisedEvaluator`` would load every volume whole; this engine keeps
    the bundle's evaluator property (and its handlers: progress, logging) while
    streaming. Each output is ``output_dir/<stem>_seg.<format>`` and appears whole or
    not at all. With ``staged``, ``output_dir`` is the staging folder of a
    ``xray_seg.shared.handlers.StagedOutputs`` handler, which prepares and publishes it
    (``multi_gpu_inference.yaml``: every rank segments its share of the volumes there).
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        output_dir: str,
        network: torch.nn.Module,
        inferer: Inferer,
        slab_depth: int | None = None,
        halo: int = 16,
        lower: float = 0.5,
        upper: float = 99.5,
        suffix: str = "_seg",
        staged: bool = False,
        slab_voxels: int = SLAB_VOXELS,
    ) -> None:
        super().__init__(self._segment)
        or_exit(lambda: check_output_dir(output_dir))  # before the first volume is segmented
        self.dataset = dataset
        self.settings = dict(network=network, inferer=inferer, slab_depth=slab_depth, halo=halo, lower=lower,
                             upper=upper, slab_voxels=slab_voxels)
        self.output_dir, self.suffix, self.staged = output_dir, suffix, staged

    def _segment(self, engine: Engine, item: dict) -> dict:
        out = output_path(item["image"], self.output_dir, self.suffix)
        # A problem found while streaming (non-finite voxels, an unreadable slab) is bad input
        # too: one ERROR: line and exit 2 (a SystemExit, which ignite's exception handlers
        # do not log as a traceback); the volume's temporary output is already removed.
        or_exit(lambda: segment_volume(item["image"], out, **self.settings), (VolumeError,))
        logger.info("wrote %s", out)
        return {"image": item["image"], "output": str(out)}

    def run(self, data: Sequence[dict] | None = None, max_epochs: int = 1, **kwargs) -> State:
        items = self.dataset if data is None else data
        if not self.staged:  # a StagedOutputs handler prepares its own folder
            or_exit(lambda: prepare_output_dir(self.output_dir))  # debris of a killed run
        return super().run([items[i] for i in range(len(items))], max_epochs=max_epochs, **kwargs)


def segment_folder(dataset_dir: str, output_dir: str, network: torch.nn.Module, inferer: Inferer, **settings) -> list[Path]:
    """Segment every volume of ``dataset_dir`` into ``output_dir``; the paths written.
    ``settings``: those of ``VolumeSegmenter`` (slab_depth, slab_voxels, halo, lower, upper, suffix)."""
    engine = VolumeSegmenter(volume_items(dataset_dir, output_dir), output_dir, network, inferer, **settings)
    written: list[Path] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: written.append(Path(e.state.output["output"])))
    engine.run()
    return written
