"""Tomography-specific evaluation: accuracy at phase boundaries, and the
two-threshold baseline every model must beat, scored like the model.

Phase interiors are easy (a global threshold gets them); the errors of any method
concentrate within a voxel or two of the boundaries between phases, so the reports
give accuracy separately in a band around the true boundaries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from xray_seg.shared.atomic import write_text
from xray_seg.shared.errors import or_exit
from xray_seg.shared.outputs import check_output_file
from xray_seg.tomography.inputs import volume_cases
from xray_seg.shared.reports import class_scores_from_confusion, confusion_matrix, to_jsonable
from xray_seg.tomography.threshold_baseline import apply_thresholds, fit_thresholds
from xray_seg.tomography.transforms import LoadVolumed

logger = logging.getLogger(__name__)

BOUNDARY_WIDTH = 1  # voxels either side of a boundary


def boundary_band(labels: np.ndarray, width: int = BOUNDARY_WIDTH) -> np.ndarray:
    """Voxels whose (2*width+1)-neighbourhood holds more than one phase."""
    size = 2 * width + 1
    return ndimage.maximum_filter(labels, size=size) != ndimage.minimum_filter(labels, size=size)


def boundary_accuracy(pred_labels: np.ndarray, true_labels: np.ndarray, width: int = BOUNDARY_WIDTH) -> dict[str, float]:
    """Voxel accuracy inside the band around true phase boundaries, and away from it."""
    return _band_accuracy(pred_labels == true_labels, boundary_band(true_labels, width))


def _band_accuracy(correct: np.ndarray, band: np.ndarray) -> dict[str, float]:
    return {
        "boundary_accuracy": float(correct[band].mean()) if band.any() else float("nan"),
        "interior_accuracy": float(correct[~band].mean()) if (~band).any() else float("nan"),
        "boundary_fraction": float(band.mean()),
    }


def boundary_measures(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``SegmentationReport`` case measure: one-hot (C, spatial...) masks in."""
    return boundary_accuracy(pred.argmax(0), truth.argmax(0))


def scores(pred_labels: np.ndarray, true_labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-phase Dice, IoU, accuracy, precision, recall, F1 and the confusion matrix."""
    cm = confusion_matrix(pred_labels, true_labels, len(class_names))
    per_class = class_scores_from_confusion(cm)
    return {
        "mean_dice": float(np.mean([per_class[c]["dice"] for c in range(len(class_names))])),
        "accuracy": float(np.trace(cm) / cm.sum()),
        "classes": {name: per_class[c] for c, name in enumerate(class_names)},
        "confusion_matrix": {"labels": list(class_names), "rows": "truth", "columns": "prediction", "counts": cm},
    }


def _slabs(datalist: str, dataset_dir: str, split: str, label_values: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    load = LoadVolumed(keys=["image", "label"], label_values=label_values)
    out = []
    for item in volume_cases(datalist, dataset_dir, split, label_values):
        d = load(item)
        out.append((d["image"][0].numpy(), d["label"][0].numpy().astype(np.uint8)))
    return out


def threshold_baseline_report(
    datalist: str,
    dataset_dir: str,
    output_dir: str,
    label_values: Sequence[int],
    class_names: Sequence[str],
    fit_split: str = "training",
    split: str = "testing",
) -> dict:
    """Fit two global thresholds on ``fit_split``, score them on ``split``; write baseline_metrics.json."""
    path = or_exit(lambda: check_output_file(Path(output_dir) / "baseline_metrics.json"))  # before the slow part
    train = _slabs(datalist, dataset_dir, fit_split, label_values)
    image = np.concatenate([i.ravel() for i, _ in train])
    labels = np.concatenate([l.ravel() for _, l in train])
    thresholds = fit_thresholds(image, labels)
    test = _slabs(datalist, dataset_dir, split, label_values)
    pred = np.concatenate([apply_thresholds(i, thresholds).ravel() for i, _ in test])
    truth = np.concatenate([l.ravel() for _, l in test])
    # Scores are pooled over the slabs; boundaries are found in each slab, in 3D.
    report = scores(pred, truth, class_names)
    report.update(_band_accuracy(pred == truth, np.concatenate([boundary_band(l).ravel() for _, l in test])))
    report = {"method": "two global intensity thresholds fitted on the training split",
              "thresholds": list(map(float, thresholds)), "fit_split": fit_split, "split": split, **report}
    write_text(path, json.dumps(to_jsonable(report), indent=2) + "\n")
    logger.info("threshold baseline: mean Dice %.4f, boundary accuracy %.4f; wrote %s",
                report["mean_dice"], report["boundary_accuracy"], path)
    return report
