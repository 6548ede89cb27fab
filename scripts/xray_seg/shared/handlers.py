"""Ignite handlers that MONAI does not ship, shared by the bundles.

- ``SegmentationReport``: the evaluation report (metrics.json, per-case CSV, collage).
  MONAI's metric classes do the scoring; MONAI's ``MetricsSaver`` writes CSVs
  only, without the per-class JSON summary, pixel confusion matrix and pictures
  that the reports need.
- ``TensorBoardOverlay``: input / truth / prediction overlays in TensorBoard.
  MONAI's ``TensorBoardImageHandler`` logs the three images separately, with no
  overlay, which is what reviewers actually look at.
- ``StagedOutputs``: all-or-nothing output folders for inference.
- ``QualityTable``: one quality row per input (``item["qc"]``) written as ``qc.csv``
  into the staging folder, so it is published with the masks or not at all.
- ``ThreadedPostprocessing``: an evaluator's postprocessing applied to the images of
  a batch in parallel threads. MONAI's workflows apply it to one image after another.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents, engine_apply_transform
from monai.metrics import (
    ConfusionMatrixMetric,
    DiceMetric,
    HausdorffDistanceMetric,
    MeanIoU,
    compute_confusion_matrix_metric,
)

from xray_seg.shared.errors import or_exit
from xray_seg.shared.outputs import prepare_output_dir, publish_folder
from xray_seg.shared.reports import class_scores_from_confusion, confusion_matrix, write_csv, write_report
from xray_seg.shared.figures import BLUE, RED, label_overlay, overlay, plot_training_curves, save_collage

logger = logging.getLogger(__name__)

# Names as in the literature; values are MONAI's confusion-matrix metric names.
_CONFUSION_METRICS = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "f1 score"}
# Per-case metrics of the report, in column order.
METRICS = ("dice", "iou", *_CONFUSION_METRICS, "hd95")


def gather_to_rank0(payload: Any) -> list[Any] | None:
    """Every rank's ``payload`` (any picklable object) on rank 0, in rank order; None on the
    other ranks; ``[payload]`` in one process. torch.distributed.gather_object rather than
    ignite's idist.all_gather: only rank 0 needs the pictures, so no other rank holds them all."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [payload]
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    torch.distributed.gather_object(payload, gathered, dst=0)
    return gathered


def _case_name(item: dict, key: str) -> str:
    meta = getattr(item.get(key), "meta", {}) or {}
    name = Path(str(meta.get("filename_or_obj", "case"))).name
    slices = meta.get("slices")  # a slab of a volume (xray_seg.tomography.transforms.LoadVolumed)
    return name if slices is None else f"{name}[{int(slices[0])}:{int(slices[1])}]"


def _picture_plane(x: torch.Tensor) -> np.ndarray:
    """(C, W, H[, D]) channel-first tensor -> 2D (H, W) numpy plane for pictures.

    Volumes show their central slice along the last axis.
    """
    arr = x.detach().float().cpu()
    if arr.ndim == 4:
        arr = arr[..., arr.shape[-1] // 2]
    return arr.numpy().transpose(0, 2, 1)


PlanesFn = Callable[[torch.Tensor], list[tuple[str, np.ndarray]]]


def central_plane(x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """The default picture planes: one, ``_picture_plane``; untagged."""
    return [("", _picture_plane(x))]


def argmax_labels(onehot: torch.Tensor) -> torch.Tensor:
    """One-hot (C, spatial...) -> label map; the default for mutually exclusive classes."""
    return onehot.argmax(dim=0) if onehot.shape[0] > 1 else (onehot[0] > 0.5).long()


LabelMapFn = Callable[[torch.Tensor], torch.Tensor]


class SegmentationReport:
    """Score every evaluated case with MONAI metrics and write the report files.

    Expects decollated engine outputs whose ``pred`` and ``label`` are one-hot
    (C, spatial...) tensors, the form MONAI metrics take. With ``multi_label``
    the channels are overlapping structures (sigmoid outputs): every channel is
    scored whole, and ``to_label_map`` (e.g. a priority merge) turns them into
    the label map that pictures and the pixel confusion matrix use.
    ``case_measures(pred, truth)`` may add per-case figures computed from the
    (C, spatial...) numpy masks, such as a cardiothoracic-ratio error; ``extra_key``
    names an item entry (a dict, e.g. the quality row ``qc``) merged into each
    per-case row, so reports can relate it to the scores. Writes under
    ``output_dir``: ``metrics.json`` (means per class, mean Dice, pooled pixel
    confusion matrix), ``metrics_per_case.csv`` and ``collage.png`` (one tile per
    (tag, plane) that ``planes`` picks from a case, e.g. several z-slices); and, when
    ``log_dir`` holds TensorBoard logs of the training run, ``training_curves.png``.

    Cases are listed by name. In a distributed evaluation (torchrun,
    ``multi_gpu_evaluate.yaml``) every rank scores its share; at the end of the epoch
    rank 0 gathers all ranks' rows, pictures and pixel counts and writes the files,
    which then equal those of an evaluation in one process.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        include_background: bool = False,
        multi_label: bool = False,
        to_label_map: LabelMapFn = argmax_labels,
        case_measures: Callable[[np.ndarray, np.ndarray], dict] | None = None,
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str = "label",
        collage_rows: int = 24,
        log_dir: str | None = None,
        settings: dict | None = None,
        planes: PlanesFn = central_plane,
        extra_key: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.extra_key = extra_key
        self.class_names = list(class_names)
        self.multi_label = multi_label
        # Multi-label channels are structures, none of them background.
        self.include_background = include_background or multi_label
        self.to_label_map = to_label_map
        self.case_measures = case_measures
        self.map_names = ["background", *self.class_names] if multi_label else self.class_names
        self.keys = (image_key, pred_key, label_key)
        self.collage_rows = collage_rows
        self.log_dir = log_dir
        self.settings = settings or {}
        self.planes = planes
        self.reset()

    def reset(self) -> None:
        kw = dict(include_background=self.include_background, reduction="none")
        self.dice = DiceMetric(ignore_empty=False, **kw)
        self.iou = MeanIoU(ignore_empty=False, **kw)
        self.hd95 = HausdorffDistanceMetric(percentile=95, **kw)
        self.confusion = ConfusionMatrixMetric(metric_name="accuracy", compute_sample=True, **kw)
        self.pixels = np.zeros((len(self.map_names),) * 2, dtype=np.int64)
        self.extra: list[dict] = []
        self.item_extra: list[dict] = []
        self.names: list[str] = []
        self.pictures: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.score_batch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def score_batch(self, engine: Engine) -> None:
        image_key, pred_key, label_key = self.keys
        for item in engine.state.output:
            pred = item[pred_key].detach().float()[None]
            label = item[label_key].detach().float()[None]
            for metric in (self.dice, self.iou, self.hd95, self.confusion):
                metric(y_pred=pred, y=label)
            pred_labels, true_labels = self.to_label_map(pred[0]), self.to_label_map(label[0])
            self.pixels += confusion_matrix(pred_labels, true_labels, len(self.map_names))
            if self.case_measures is not None:
                self.extra.append(self.case_measures(pred[0].cpu().numpy(), label[0].cpu().numpy()))
            if self.extra_key is not None:
                self.item_extra.append(dict(item.get(self.extra_key) or {}))
            self.names.append(_case_name(item, image_key))
            image = item[image_key].detach().float()
            if image.shape[1:] != pred.shape[2:]:  # network-sized input beside full-size masks
                image = F.interpolate(image[None], size=pred.shape[2:], mode="nearest")[0]
            views = zip(self.planes(image), self.planes(pred_labels[None]), self.planes(true_labels[None]))
            for (tag, img), (_, pred_plane), (_, true_plane) in views:
                self.pictures.append(
                    {
                        "case": len(self.names) - 1,
                        "name": f"{self.names[-1]} {tag}".strip(),
                        "image": img[0],
                        "pred": pred_plane[0].astype(np.uint8),
                        "truth": true_plane[0].astype(np.uint8),
                    }
                )

    def per_case_scores(self) -> dict[str, torch.Tensor]:
        """Metric name (``METRICS``, in that order) -> (cases, classes) tensor.

        In a distributed run MONAI's metrics gather their buffers over the ranks
        (``Cumulative.get_buffer``, a collective: every rank calls it), so the rows are
        every rank's cases, rank 0's first."""
        buffer = self.confusion.get_buffer()
        scores = {
            "dice": self.dice.aggregate(),
            "iou": self.iou.aggregate(),
            **{name: compute_confusion_matrix_metric(monai_name, buffer) for name, monai_name in _CONFUSION_METRICS.items()},
            "hd95": self.hd95.aggregate(),
        }
        return {k: v.reshape(len(v), -1).float().cpu() for k, v in scores.items()}

    @property
    def scored_classes(self) -> list[str]:
        return self.class_names if self.include_background else self.class_names[1:]

    def case_fields(self) -> list[dict[str, Any]]:
        """This process's per-case row entries besides the metrics (which MONAI gathers):
        the case name, then the case measures. They travel to rank 0 as they are, so an
        entry added here reaches the report from every rank."""
        rows = [{"case": name, **(self.extra[i] if self.extra else {})} for i, name in enumerate(self.names)]
        for row, item_extra in zip(rows, self.item_extra):  # e.g. the quality check's columns
            row.update({k: v for k, v in item_extra.items() if k not in row})
        return rows

    def gathered_cases(self) -> tuple[list[dict], list[dict], list[dict], np.ndarray] | None:
        """Every process's cases on rank 0, sorted by case name: (per-case rows, case
        measures, pictures, pixel confusion); None on the other ranks and when no case
        was scored. One process takes the same path without communication, so the files
        of a run on N processes equal those of a run on one. A collective: every rank calls it."""
        # MONAI gathers the metrics; the rest are Python objects, gathered here in the same rank order.
        scores = self.per_case_scores() if self.names else None
        parts = gather_to_rank0({"fields": self.case_fields(), "extra": self.extra, "pictures": self.pictures,
                                 "pixels": self.pixels})
        if parts is None or scores is None:
            return None
        fields: list[dict] = []
        extra: list[dict] = []
        pictures: list[dict] = []
        for part in parts:  # rank order; picture -> case indices become global ones
            pictures += [{**pic, "case": pic["case"] + len(fields)} for pic in part["pictures"]]
            fields += part["fields"]
            extra += part["extra"]
        rows = []
        for i, own in enumerate(fields):
            row: dict[str, Any] = {"case": own["case"]}
            for metric, values in scores.items():
                for c, cls in enumerate(self.scored_classes):
                    row[f"{metric}_{cls}"] = float(values[i, c])
            row["mean_dice"] = float(torch.nanmean(scores["dice"][i]))
            row.update(own)
            rows.append(row)
        order = sorted(range(len(rows)), key=lambda i: rows[i]["case"])
        position = {old: new for new, old in enumerate(order)}
        pictures = sorted(({**pic, "case": position[pic["case"]]} for pic in pictures), key=lambda pic: pic["case"])
        pixels = np.sum([part["pixels"] for part in parts], axis=0, dtype=np.int64)
        return [rows[i] for i in order], [extra[i] for i in order] if extra else [], pictures, pixels

    def write(self, engine: Engine) -> None:
        gathered = self.gathered_cases()  # a collective: every rank calls it
        if gathered is None:
            return
        per_case, extra, pictures, pixels = gathered
        for picture in pictures:
            picture["score"] = per_case[picture["case"]]["mean_dice"]
        classes = self.scored_classes
        # The summary is computed from the rows, so it is the same whichever rank scored a case.
        scores = {metric: torch.tensor([[row[f"{metric}_{cls}"] for cls in classes] for row in per_case])
                  for metric in METRICS}

        def nanmean(values: torch.Tensor) -> float:
            finite = values[torch.isfinite(values)]
            return float(finite.mean()) if finite.numel() else float("nan")

        summary = {
            "num_cases": len(per_case),
            "mean_dice": nanmean(scores["dice"]),
            "classes": {
                cls: {metric: nanmean(values[:, c]) for metric, values in scores.items()} for c, cls in enumerate(classes)
            },
            "std_dice": {cls: float(scores["dice"][:, c].std()) for c, cls in enumerate(classes)},
            **({"case_measures": {k: nanmean(torch.tensor([e[k] for e in extra], dtype=torch.float64))
                                  for k in extra[0]}} if extra else {}),
            "pixel_confusion_matrix": {
                "labels": self.map_names,
                "rows": "truth",
                "columns": "prediction",
                "counts": pixels.tolist(),
            },
            "pooled_pixel_scores": {
                self.map_names[c]: s for c, s in class_scores_from_confusion(pixels).items()
            },
            "units": {"hd95": "pixels (voxels) of the evaluated image"},
            "engine_metrics": {k: v for k, v in engine.state.metrics.items() if isinstance(v, (int, float))},
            **({"settings": self.settings} if self.settings else {}),
        }
        json_path, csv_path = write_report(self.output_dir, summary, per_case)
        collage = save_collage(pictures, self.output_dir / "collage.png", max_rows=self.collage_rows)
        logger.info("mean Dice %.4f over %d cases; wrote %s, %s, %s", summary["mean_dice"], len(per_case), json_path, csv_path, collage)
        self.write_curves()

    def write_curves(self) -> None:
        """``training_curves.png`` from the evaluated model's own run, or a note that there is none
        (never the curves of another run: a stale picture from an earlier evaluation is removed)."""
        path = self.output_dir / "training_curves.png"
        path.unlink(missing_ok=True)
        if not (self.log_dir and Path(self.log_dir).is_dir()):
            logger.info("no training curves: the evaluated model has no run folder with TensorBoard logs "
                        "(shipped models are trained elsewhere; see the model card)")
            return
        try:
            curves = plot_training_curves(self.log_dir, path)
            logger.info("wrote training curves (%d epochs) to %s", len(curves["loss"]), path)
        except (FileNotFoundError, ValueError) as err:
            logger.warning("no training curves: %s", err)


class TensorBoardOverlay:
    """Log one validation case per epoch as [input | truth | prediction].

    One class: truth in blue, prediction in red. Several classes: each class in
    its own colour (``to_label_map`` as in ``SegmentationReport``).
    """

    def __init__(
        self,
        summary_writer: Any,
        to_label_map: LabelMapFn = argmax_labels,
        tag: str = "validation/overlay",
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str = "label",
        planes: PlanesFn = central_plane,
    ) -> None:
        self.writer = summary_writer
        self.planes = planes
        self.to_label_map = to_label_map
        self.tag = tag
        self.keys = (image_key, pred_key, label_key)

    def attach(self, engine: Engine) -> None:
        # Each validation round is a new run whose iterations count from 1 again.
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        image_key, pred_key, label_key = self.keys
        item = engine.state.output[0]
        image = self.planes(item[image_key])[0][1][0]
        pred = self.planes(self.to_label_map(item[pred_key])[None])[0][1][0].astype(np.int64)
        truth = self.planes(self.to_label_map(item[label_key])[None])[0][1][0].astype(np.int64)
        if pred.shape != image.shape:
            return  # full-resolution masks beside a resized input: nothing sensible to overlay
        if max(pred.max(), truth.max()) > 1:
            views = [label_overlay(image, truth), label_overlay(image, pred)]
        else:
            views = [overlay(image, [(truth > 0, BLUE)]), overlay(image, [(pred > 0, RED)])]
        panel = np.concatenate([overlay(image, []), *views], axis=1)
        # MONAI evaluators run with the trainer's epoch as their own.
        self.writer.add_image(self.tag, panel, engine.state.epoch, dataformats="HWC")


class StagedOutputs:
    """Write inference outputs to a staging folder and publish them only on success.

    A failed or interrupted run leaves ``output_dir`` as it was: no half-written
    or partial set of masks. The staging folder lives inside ``output_dir``; on
    success it is committed with one rename and its files moved into place
    (``xray_seg.shared.outputs.publish_folder``, which also says what a reader
    sees). At the start, what a killed earlier run left (its staging folder,
    temporary files, an interrupted publish) is cleaned up or completed.

    In a distributed run (torchrun, ``multi_gpu_inference.yaml``) every rank stages its
    share into the same folder; rank 0 prepares it before any rank writes and publishes
    the whole set once every rank is done (``torch.distributed`` barriers, through
    ignite's ``idist``, which are no-ops in one process).
    """

    def __init__(self, staging_dir: str, output_dir: str) -> None:
        self.staging_dir = Path(staging_dir)
        self.output_dir = Path(output_dir)

    @property
    def rank0(self) -> bool:
        return idist.get_rank() == 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.prepare)
        engine.add_event_handler(Events.COMPLETED, self.publish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.discard)

    def prepare(self, _: Engine) -> None:
        if self.rank0:
            or_exit(lambda: prepare_output_dir(self.output_dir))
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            self.staging_dir.mkdir(parents=True)
        idist.barrier()  # no rank writes before the staging folder is ready

    def publish(self, _: Engine) -> None:
        idist.barrier()  # every rank has staged its share
        if self.rank0:
            moved = publish_folder(self.staging_dir, self.output_dir)
            logger.info("wrote %d files to %s", moved, self.output_dir)

    def discard(self, _: Engine, error: Exception) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        raise error  # ignite swallows exceptions once a handler is registered for them


class QualityTable:
    """Collect ``item[key]`` rows (dicts) of every inference item and write them as ``<staging_dir>/<file_name>``.

    One row per input, sorted by ``sort_key``. The file goes into the staging folder
    at COMPLETED, before ``StagedOutputs`` publishes (list this handler before it: ignite
    runs handlers of one event in the order they were attached), so it appears with the
    masks or not at all. Under torchrun every rank's rows are gathered to rank 0
    (``idist.all_gather`` of Python objects; a no-op in one process).
    """

    def __init__(self, staging_dir: str, key: str = "qc", file_name: str = "qc.csv", sort_key: str = "stem") -> None:
        self.staging_dir = Path(staging_dir)
        self.key = key
        self.file_name = file_name
        self.sort_key = sort_key
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, _: Engine) -> None:
        self.rows = []

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            if isinstance(item, dict) and isinstance(item.get(self.key), dict):
                self.rows.append(dict(item[self.key]))

    def write(self, _: Engine) -> None:
        gathered = idist.all_gather(self.rows) if idist.get_world_size() > 1 else [self.rows]
        if idist.get_rank() != 0:
            return
        rows = sorted((row for rank_rows in gathered for row in rank_rows), key=lambda r: str(r.get(self.sort_key, "")))
        path = write_csv(self.staging_dir / self.file_name, rows)
        logger.info("quality rows of %d inputs (%d flagged) in %s", len(rows),
                    sum(bool(r.get("qc_flag")) for r in rows), path.name)


class ThreadedPostprocessing:
    """Apply ``transform`` to each (batch item, output item) pair of a batch in parallel threads.

    Give it the evaluator's postprocessing and pass ``postprocessing: null`` to the
    evaluator: MONAI's ``Workflow`` applies postprocessing at MODEL_COMPLETED to one
    decollated item after another, in one thread. Here the items of a batch go to a
    pool of ``threads`` (default: the CPUs this process may use, shared among the
    processes of a torchrun launch on this machine; a smaller batch uses fewer) through
    MONAI's own ``engine_apply_transform``, at the same event and in the same order of
    results. The work is numpy, scipy, torch and PNG encoding, which
    release the GIL for most of their time, so on 2 CPUs the 2D inference runs about
    1.2 times as fast (``xray-seg benchmark throughput``). The transforms must not
    keep per-call state in the instance (MONAI's do not, nor do ours); the results
    are the same as in one thread.
    """

    def __init__(self, transform: Callable, threads: int | None = None) -> None:
        self.transform = transform
        self.threads = threads or default_threads()
        self.pool: ThreadPoolExecutor | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)
        # Not at EXCEPTION_RAISED: ignite swallows exceptions once a handler is registered
        # for them. A pool left by a failed run is shut down when the next run starts.
        engine.add_event_handler(Events.COMPLETED, self.stop)

    def start(self, _: Engine) -> None:
        self.stop()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="postprocessing")

    def stop(self, *_: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __call__(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(batch, list) or not isinstance(output, list):  # not decollated: one item
            engine.state.batch, engine.state.output = engine_apply_transform(batch, output, self.transform)
            return
        if self.pool is None or len(batch) == 1:
            results = [engine_apply_transform(b, o, self.transform) for b, o in zip(batch, output)]
        else:
            results = list(self.pool.map(lambda bo: engine_apply_transform(*bo, self.transform), zip(batch, output)))
        engine.state.batch = [b for b, _ in results]
        engine.state.output = [o for _, o in results]


def default_threads() -> int:
    """The CPUs this process may use, divided among torchrun's processes on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
