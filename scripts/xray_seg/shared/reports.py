"""Pixel confusion matrices over label maps, and writing metric reports to disk.

Per-case metrics come from MONAI; this module adds what MONAI lacks: a K x K confusion
matrix (aggregated over a whole test set, it shows which classes are confused with
which), scores derived from it as a cross-check, and atomic JSON/CSV report files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from xray_seg.shared.atomic import write_text


def _labels(array: np.ndarray | torch.Tensor, num_classes: int, what: str) -> np.ndarray:
    """int64 labels; accepts integral floats (e.g. MONAI's AsDiscrete(argmax) output)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{what} labels must be integers, got non-integral {array.dtype} values")
    labels = array.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def confusion_matrix(
    pred_labels: np.ndarray | torch.Tensor,
    true_labels: np.ndarray | torch.Tensor,
    num_classes: int,
) -> np.ndarray:
    """K x K int64 pixel counts; cm[t, p] = number of pixels of true class t predicted as p."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = _labels(pred_labels, num_classes, "pred")
    true = _labels(true_labels, num_classes, "truth")
    if pred.shape != true.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs truth {true.shape}")
    counts = np.bincount((true * num_classes + pred).ravel(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def class_scores_from_confusion(cm: np.ndarray) -> dict[int, dict[str, float]]:
    """One-vs-rest scores per class from a confusion matrix (rows = truth, cols = prediction).

    Keys per class: dice, iou, precision, recall, f1 (equal to dice for pixel counts),
    accuracy (one-vs-rest pixel accuracy) and support (true pixel count).

    No NaNs are produced. A ratio that is 0/0 is 1.0 when the class is absent from both
    truth and prediction (nothing to find and nothing wrongly found: perfect agreement),
    and 0.0 otherwise (e.g. precision when the class exists in the truth but was never
    predicted: a miss is scored as a failure, as Dice scores it).
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    total = int(cm.sum())
    scores: dict[int, dict[str, float]] = {}
    for c in range(cm.shape[0]):
        tp = int(cm[c, c])
        fn = int(cm[c, :].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = total - tp - fn - fp
        absent = tp + fn + fp == 0

        def ratio(num: int, den: int) -> float:
            return num / den if den else (1.0 if absent else 0.0)

        dice = ratio(2 * tp, 2 * tp + fp + fn)
        scores[c] = {
            "dice": dice,
            "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
            "f1": dice,
            "accuracy": ratio(tp + tn, total),
            "support": float(tp + fn),
        }
    return scores


def to_jsonable(value: Any) -> Any:
    """Plain-Python copy of `value`: numpy/torch scalars and arrays become numbers and
    lists, mapping keys become strings, paths become strings, NaN/inf become None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _csv_cell(value: Any) -> Any:
    value = to_jsonable(value)
    if value is None:
        return ""  # NaN and missing values: an empty cell, which CSV readers take as missing
    if isinstance(value, bool):
        return "true" if value else "false"  # as in JSON, and as qc.csv documents its flag
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as CSV at ``path``, atomically.

    Columns are the union of the rows' keys in first-seen order; a row lacking a key
    gets an empty cell. Floats keep 6 significant digits, booleans read true/false.
    """
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if columns:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(k)) for k in columns])
    write_text(path, buffer.getvalue())
    return Path(path)


def write_report(
    out_dir: str | os.PathLike,
    summary: Mapping[str, Any],
    per_case: Sequence[Mapping[str, Any]],
    json_name: str = "metrics.json",
    csv_name: str = "metrics_per_case.csv",
) -> tuple[Path, Path]:
    """Write `summary` as pretty JSON and `per_case` rows as CSV under `out_dir`, atomically.

    CSV columns are the union of the rows' keys in first-seen order; a row lacking a key
    gets an empty cell. Floats keep 6 significant digits. Returns (json_path, csv_path).
    """
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / json_name, out_dir / csv_name
    write_text(json_path, json.dumps(to_jsonable(summary), indent=2, allow_nan=False) + "\n")
    write_csv(csv_path, per_case)
    return json_path, csv_path
