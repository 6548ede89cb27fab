"""The data entry points that bundle configs call.

Each turns the project's own input errors into one ``ERROR:`` line and exit
status 2 (``xray_seg.shared.errors``), before any output is written. The volume
entry points are in ``xray_seg.tomography.inputs`` and ``xray_seg.tomography.inference``.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai.data import DataLoader, Dataset
from monai.data.utils import worker_init_fn

from xray_seg.shared.errors import fail, input_error_in, or_exit
from xray_seg.shared.image_checks import check_readable, image_stem, list_image_files, read_image_array
from xray_seg.shared.outputs import STAGING_NAME, check_output_dir
from xray_seg.shared.splits import load_split


def cases(manifest: str, dataset_dir: str, split: str | list[str], fold: int | None = None,
          output_dir: str | None = None, sites: list[str] | None = None) -> list[dict]:
    """Items of one split (or several) of a data manifest, with paths under ``dataset_dir``,
    optionally only those of ``sites``; with ``output_dir`` (an evaluation's report
    folder), the destination is checked first."""
    def load() -> list[dict]:
        if output_dir is not None:
            check_output_dir(output_dir)
        return load_split(manifest, dataset_dir, split, fold, sites)

    return or_exit(load)


def images_in(folder: str | None, output_dir: str | None = None) -> list[dict]:
    """Every supported image in ``folder`` as ``{"image": path}``, all checked up front
    (``check_image``: PNGs from header and checksums, other formats decoded) so that an
    unreadable file stops the run before any mask is written. With ``output_dir``, the
    destination is checked first."""

    if not folder:
        fail("no input folder: pass --dataset_dir IN (the folder of images to segment)")

    def scan() -> list[dict]:
        if output_dir is not None:
            check_output_dir(output_dir)
        paths = list_image_files(folder)
        _check_unique_stems(paths)
        check_readable(paths)
        return [{"image": str(p)} for p in paths]

    return or_exit(scan)


class CheckedDataset(Dataset):
    """MONAI's ``Dataset`` for inference inputs: an item whose preprocessing fails is
    decoded once more with the thorough check (``read_image_array``), so that a file that
    passed the up-front check but does not decode (a PNG with intact checksums around
    broken compressed data) stops the run with its usual message naming the file, which
    ``InputLoader`` makes one ``ERROR:`` line (and ``StagedOutputs`` publishes nothing).
    Any other failure is raised as it is."""

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception:
            read_image_array(self.data[index]["image"])  # raises ImageReadError for a bad file
            raise


class InputLoader(DataLoader):
    """MONAI's ``DataLoader`` that turns an input error of ``CheckedDataset`` into one
    ``ERROR:`` line and exit status 2 in the main process. From a worker process the error
    arrives with the worker's whole traceback as its message, which the engine would log;
    stopping here, before the engine sees it, leaves the one line (and ``StagedOutputs``
    still discards what was staged).

    Its worker processes run at a lower scheduling priority (``WORKER_NICENESS``): on a
    CPU the network's threads use every core, and a decoding worker competing with them
    as an equal made the network about half as fast (each thread waits for the slowest at
    every layer). Niced, the workers still get the cores whenever the main process leaves
    one idle (post-processing and writing are single-threaded), so the next batch is ready
    in time. PyTorch has no setting for this; ``os.nice`` is the operating system's."""

    def __init__(self, dataset, **kwargs) -> None:
        kwargs.setdefault("worker_init_fn", _niced_worker)
        super().__init__(dataset, **kwargs)

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as err:
                if message := input_error_in(err):
                    fail(message)
                raise
            yield batch


# How much less CPU priority the input workers get than the main process (0..19).
WORKER_NICENESS = 10


def _niced_worker(worker_id: int) -> None:
    """MONAI's worker set-up (its per-worker random state), then a lower priority."""
    worker_init_fn(worker_id)
    os.nice(WORKER_NICENESS)


def _check_unique_stems(paths: list[Path]) -> None:
    """Outputs are named by input stem: two inputs with one stem would overwrite each other."""
    by_stem: dict[str, list[str]] = {}
    for path in paths:
        by_stem.setdefault(image_stem(path), []).append(path.name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(", ".join(names) for names in clashes)
        raise ValueError(f"{paths[0].parent}: inputs share a file stem, so their outputs would collide: {listed}")


def staging_dir(output_dir: str) -> str:
    """The staging folder inside ``output_dir`` (see ``StagedOutputs``), after checking that
    ``output_dir`` can be written: a bad destination stops the run before inference."""
    return str(or_exit(lambda: check_output_dir(output_dir)) / STAGING_NAME)


def device_problem(device: object) -> str | None:
    """Why ``device`` cannot be used here (a CUDA device on a machine without it), or None."""
    import torch

    name = str(device)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return (f"--device {name}: CUDA is not available on this machine (no GPU or a CPU-only torch build); "
                    "use --device cpu or leave --device out")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            return f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif name.split(":")[0] not in ("cpu", "mps"):
        return f"--device {name}: unknown device; use cpu or cuda[:N]"
    return None


def check_device(device: object) -> None:
    """Config entry point: refuse an unusable device before any work (``--device cuda``)."""
    problem = device_problem(device)
    if problem:
        fail(problem)


def checkpoint(path: str) -> str:
    """``path`` when it is a checkpoint file; else one ``ERROR:`` line, before anything is written."""
    if not Path(path).is_file():
        fail(f"{path}: checkpoint not found; pass --ckpt_path to a model.pt "
             "(a training run writes runs/<bundle>/<run_name>/model.pt)")
    return path


def shard(items: list[dict], rank: int, world_size: int, what: str = "inputs") -> list[dict]:
    """This rank's share of ``items`` in a distributed run: every ``world_size``-th item from
    ``rank``, so shares differ by at most one item and together are ``items`` exactly once."""
    check_shares(len(items), world_size, what)
    return items[rank::world_size]


def check_shares(count: int, world_size: int, what: str = "inputs") -> None:
    """Refuse a distributed run with more processes than ``count`` items (one ``ERROR:`` line,
    on every rank, before the process group forms): a process without an item cannot run its
    engine (ignite refuses empty data), and the others would wait for it at the end."""
    if count < world_size:
        what = what.removesuffix("s") if count == 1 else what
        fail(f"{count} {what} for {world_size} processes: every process needs at least one; "
             f"run on at most {count} processes (--nproc)")
