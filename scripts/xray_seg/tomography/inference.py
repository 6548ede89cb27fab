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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events, State
from tqdm import tqdm

from xray_seg.shared.errors import fail, or_exit
from xray_seg.tomography.transforms import intensity_range, scale
from xray_seg.tomography.volume_io import SlabReader, SlabWriter, VolumeError, is_volume_file, output_path

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
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
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


@torch.no_grad()
def segment_volume(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    network: torch.nn.Module,
    inferer: Inferer,
    slab_depth: int = 64,
    halo: int = 16,
    lower: float = 0.5,
    upper: float = 99.5,
    progress: bool = True,
) -> Path:
    """Write the label volume (uint8, argmax over the network's channels) of ``path`` to ``out_path``."""
    if slab_depth < 1 or halo < 0:
        raise ValueError(f"slab_depth must be >= 1 and halo >= 0, got {slab_depth} and {halo}")
    network.eval()
    with SlabReader(path) as reader:
        depth = reader.meta.shape[0]
        lo, hi = volume_range(reader, lower, upper)
        starts = range(0, depth, slab_depth)
        with SlabWriter(out_path, reader.meta, dtype=np.uint8) as writer:
            for z0 in tqdm(starts, desc=Path(path).name, unit="slab", disable=not progress):
                z1 = min(depth, z0 + slab_depth)
                a0, a1 = max(0, z0 - halo), min(depth, z1 + halo)
                slab = scale(torch.from_numpy(reader.read(a0, a1).astype(np.float32)), lo, hi)
                logits = inferer(slab[None, None], network)
                labels = logits[0, :, z0 - a0 : z1 - a0].argmax(0).to(torch.uint8).cpu().numpy()
                writer.write(z0, labels)
                del logits, slab
    return Path(out_path)


def volume_items(dataset_dir: str) -> list[dict]:
    """``{"image": path}`` for every volume of ``dataset_dir``, each opened and checked
    up front, so a bad file stops the run (one ``ERROR:`` line, exit status 2)
    before anything is written."""
    if not dataset_dir:
        fail("no input folder: pass --dataset_dir IN (volumes, slice folders or DICOM series to segment)")

    def scan() -> list[Path]:
        volumes = find_volumes(dataset_dir)
        for path in volumes:
            with SlabReader(path):
                pass
        return volumes

    return [{"image": str(path)} for path in or_exit(scan, (VolumeError,))]


class VolumeSegmenter(Engine):
    """An ignite engine whose iterations each segment one volume with ``segment_volume``.

    MONAI's ``SupervisedEvaluator`` would load every volume whole; this engine keeps
    the bundle's evaluator property (and its handlers: progress, logging) while
    streaming. Each output is ``output_dir/<stem>_seg.<format>`` and appears whole or
    not at all.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        output_dir: str,
        network: torch.nn.Module,
        inferer: Inferer,
        slab_depth: int = 64,
        halo: int = 16,
        lower: float = 0.5,
        upper: float = 99.5,
        suffix: str = "_seg",
    ) -> None:
        super().__init__(self._segment)
        self.dataset = dataset
        self.settings = dict(network=network, inferer=inferer, slab_depth=slab_depth, halo=halo, lower=lower, upper=upper)
        self.output_dir, self.suffix = output_dir, suffix

    def _segment(self, engine: Engine, item: dict) -> dict:
        out = output_path(item["image"], self.output_dir, self.suffix)
        segment_volume(item["image"], out, **self.settings)
        logger.info("wrote %s", out)
        return {"image": item["image"], "output": str(out)}

    def run(self, data: Sequence[dict] | None = None, max_epochs: int = 1, **kwargs) -> State:
        items = self.dataset if data is None else data
        return super().run([items[i] for i in range(len(items))], max_epochs=max_epochs, **kwargs)


def segment_folder(dataset_dir: str, output_dir: str, network: torch.nn.Module, inferer: Inferer, **settings) -> list[Path]:
    """Segment every volume of ``dataset_dir`` into ``output_dir``; the paths written.
    ``settings``: those of ``VolumeSegmenter`` (slab_depth, halo, lower, upper, suffix)."""
    engine = VolumeSegmenter(volume_items(dataset_dir), output_dir, network, inferer, **settings)
    written: list[Path] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: written.append(Path(e.state.output["output"])))
    engine.run()
    return written
