"""Tests for xray_seg.shared.reports and xray_seg.shared.figures (fast, CPU only)."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from xray_seg.cli.main import main as cli
from xray_seg.shared.reports import class_scores_from_confusion, confusion_matrix, write_report
from xray_seg.shared.figures import (
    BLUE,
    CLASS_COLOURS,
    RED,
    collage_order,
    overlay,
    plot_training_curves,
    save_collage,
    to_display,
)

# --------------------------------------------------------------------------- confusion matrix

TRUTH_3X3 = np.array([[0, 0, 1], [0, 1, 1], [0, 0, 1]])
PRED_3X3 = np.array([[0, 1, 1], [0, 1, 0], [0, 0, 1]])

TRUTH_4X4 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
PRED_4X4 = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [2, 0, 0, 0], [2, 2, 0, 0]])


def test_confusion_matrix_two_classes_by_hand() -> None:
    # (truth, pred) pairs: (0,0) x4 at r0c0 r1c0 r2c0 r2c1; (0,1) at r0c1;
    # (1,1) x3 at r0c2 r1c1 r2c2; (1,0) at r1c2.
    expected = np.array([[4, 1], [1, 3]])
    cm = confusion_matrix(PRED_3X3, TRUTH_3X3, num_classes=2)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_four_classes_with_absent_class_by_hand() -> None:
    # truth 0 (8 px): 7 predicted 0, r1c1 predicted 1; truth 1 (4 px): all predicted 1;
    # truth 2 (4 px): r2c1 predicted 0, 3 predicted 2; class 3 appears nowhere.
    expected = np.array([[7, 1, 0, 0], [0, 4, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(PRED_4X4, TRUTH_4X4, num_classes=4), expected)


def test_confusion_matrix_accepts_tensors_and_integral_floats() -> None:
    expected = confusion_matrix(PRED_4X4, TRUTH_4X4, 4)
    as_tensors = confusion_matrix(torch.from_numpy(PRED_4X4), torch.from_numpy(TRUTH_4X4), 4)
    # MONAI's AsDiscrete(argmax=True) yields float tensors with a channel dim.
    as_floats = confusion_matrix(torch.from_numpy(PRED_4X4).float()[None], torch.from_numpy(TRUTH_4X4)[None], 4)
    np.testing.assert_array_equal(as_tensors, expected)
    np.testing.assert_array_equal(as_floats, expected)


@pytest.mark.parametrize(
    "pred, truth, message",
    [
        (np.array([0.5, 1.0]), np.array([0, 1]), "integers"),
        (np.array([0, 2]), np.array([0, 1]), "0..1"),
        (np.array([0, 1, 1]), np.array([0, 1]), "shape"),
    ],
)
def test_confusion_matrix_rejects_bad_labels(pred: np.ndarray, truth: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(pred, truth, num_classes=2)


def test_class_scores_two_classes_by_hand() -> None:
    scores = class_scores_from_confusion(np.array([[4, 1], [1, 3]]))
    # class 1: tp=3 fn=1 fp=1 tn=4 -> dice 6/8, iou 3/5, precision 3/4, recall 3/4, acc 7/9
    assert scores[1] == pytest.approx(
        {"dice": 0.75, "iou": 0.6, "precision": 0.75, "recall": 0.75, "f1": 0.75, "accuracy": 7 / 9, "support": 4}
    )
    # class 0: tp=4 fn=1 fp=1 tn=3 -> dice 8/10, iou 4/6, precision 4/5, recall 4/5, acc 7/9
    assert scores[0] == pytest.approx(
        {"dice": 0.8, "iou": 4 / 6, "precision": 0.8, "recall": 0.8, "f1": 0.8, "accuracy": 7 / 9, "support": 5}
    )


def test_class_scores_four_classes_by_hand() -> None:
    cm = np.array([[7, 1, 0, 0], [0, 4, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]])
    scores = class_scores_from_confusion(cm)
    # class 0: tp=7 fn=1 fp=1 tn=7 -> dice 14/16, iou 7/9, precision 7/8, recall 7/8, acc 14/16
    assert scores[0] == pytest.approx(
        {"dice": 14 / 16, "iou": 7 / 9, "precision": 7 / 8, "recall": 7 / 8, "f1": 14 / 16, "accuracy": 14 / 16,
         "support": 8}
    )
    # class 1: tp=4 fn=0 fp=1 tn=11 -> dice 8/9, iou 4/5, precision 4/5, recall 1, acc 15/16
    assert scores[1] == pytest.approx(
        {"dice": 8 / 9, "iou": 0.8, "precision": 0.8, "recall": 1.0, "f1": 8 / 9, "accuracy": 15 / 16, "support": 4}
    )
    # class 2: tp=3 fn=1 fp=0 tn=12 -> dice 6/7, iou 3/4, precision 1, recall 3/4, acc 15/16
    assert scores[2] == pytest.approx(
        {"dice": 6 / 7, "iou": 0.75, "precision": 1.0, "recall": 0.75, "f1": 6 / 7, "accuracy": 15 / 16, "support": 4}
    )
    # class 3: absent from truth and prediction -> every 0/0 ratio is 1.0; acc (0+16)/16
    assert scores[3] == {
        "dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0, "support": 0.0
    }


def test_class_scores_missed_class_scores_zero_not_nan() -> None:
    # truth [1, 1, 0], prediction all 0 -> class 1: tp=0 fn=2 fp=0; precision 0/0 counts as a miss
    scores = class_scores_from_confusion(confusion_matrix(np.array([0, 0, 0]), np.array([1, 1, 0]), 2))
    assert scores[1]["dice"] == 0.0 and scores[1]["precision"] == 0.0 and scores[1]["recall"] == 0.0
    assert not any(math.isnan(v) for s in scores.values() for v in s.values())


@pytest.mark.parametrize("seed", range(5))
def test_dice_matches_monai(seed: int) -> None:
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    rng = np.random.default_rng(seed)
    pred = rng.random((2, 1, 17, 23)) < rng.uniform(0.2, 0.8)
    truth = rng.random((2, 1, 17, 23)) < rng.uniform(0.2, 0.8)
    pred_t, truth_t = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth.astype(np.int64))
    monai_dice = compute_dice(one_hot(pred_t, 2), one_hot(truth_t, 2), include_background=True)
    for b in range(2):
        ours = class_scores_from_confusion(confusion_matrix(pred[b], truth[b], 2))
        for c in range(2):
            assert ours[c]["dice"] == pytest.approx(float(monai_dice[b, c]), abs=1e-6)


# --------------------------------------------------------------------------- overlays


def test_to_display_constant_image_is_zeros_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_display(np.full((5, 6), 3.7))
    assert out.dtype == np.uint8 and out.shape == (5, 6) and not out.any()


def test_to_display_stretch_ignores_outliers() -> None:
    image = np.tile(np.linspace(0.0, 1.0, 100), (100, 1))
    image[0, 0] = 1e6  # a single burned-in bright pixel must not squash the ramp
    out = to_display(image)
    assert out[:, 0].min() == 0 and out[50, -1] == 255
    assert 100 < out[50, 50] < 155


def test_overlay_colours_per_case() -> None:
    image = np.zeros((2, 2))  # constant -> grey 0, so only the tint remains
    pred = np.array([[1, 1], [0, 0]], bool)
    truth = np.array([[1, 0], [1, 0]], bool)
    out = overlay(image, [(pred, RED), (truth, BLUE)], alpha=0.4, contour=False)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    both, pred_only, truth_only, neither = out[0, 0], out[0, 1], out[1, 0], out[1, 1]
    assert pred_only[0] > pred_only[2]
    assert truth_only[2] > truth_only[0]
    assert both[0] > 0 and both[2] > 0
    np.testing.assert_array_equal(neither, [0, 0, 0])
    # red 0.4*255 = 102; blue over red: 0.6*102 = 61, 0.4*90 = 36, 0.4*255 = 102
    np.testing.assert_array_equal(pred_only, [102, 0, 0])
    np.testing.assert_array_equal(both, [61, 36, 102])


def test_overlay_contour_is_full_colour_and_interior_blended() -> None:
    image = np.tile(np.arange(7.0), (7, 1))
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    out = overlay(image, [(mask, RED)])
    np.testing.assert_array_equal(out[1, 3], RED)  # boundary
    np.testing.assert_array_equal(out[3, 1], RED)
    assert tuple(out[3, 3]) != RED and out[3, 3, 0] > out[3, 3, 2]  # interior: tinted grey
    assert out[0, 3, 0] == out[0, 3, 1] == out[0, 3, 2]  # outside: plain grey


def test_overlay_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match="shape"):
        overlay(np.zeros((4, 4)), [(np.ones((3, 4), bool), RED)])


# --------------------------------------------------------------------------- collage


def _row(name: str, score: float | None, fill: bool, shape: tuple[int, int] = (40, 30)) -> dict:
    rng = np.random.default_rng(len(name))
    pred = np.full(shape, fill, bool)
    return {"name": name, "image": rng.random(shape), "pred": pred, "truth": ~pred, "score": score}


def test_collage_order_worst_first_then_truncate() -> None:
    rows = [{"score": 0.9}, {"score": 0.5}, {}, {"score": 0.7}, {"score": float("nan")}, {"score": 0.5}]
    assert collage_order(rows) == [1, 5, 3, 0, 2, 4]
    assert collage_order(rows, max_rows=2) == [1, 5]
    assert collage_order([{"name": "a"}, {"name": "b"}]) == [0, 1]


def test_save_collage_size_and_worst_row_on_top(tmp_path) -> None:
    tile = 64
    rows = [_row("good", 0.95, fill=False), _row("bad", 0.20, fill=True)]
    path = save_collage(rows, tmp_path / "two.png", tile=tile)
    two = np.asarray(Image.open(path).convert("RGB"))
    h2, w2 = two.shape[:2]
    four = Image.open(save_collage(rows * 2, tmp_path / "four.png", tile=tile))
    one = Image.open(save_collage(rows * 2, tmp_path / "one.png", tile=tile, max_rows=1))

    assert 3 * tile <= w2 <= 3 * tile + 32
    assert four.width == one.width == w2
    assert four.height - h2 == 2 * (h2 - one.height) > 2 * tile  # a row adds one tile plus a gap
    # The prediction column (centred) shows the worst ("bad", all-foreground) row first.
    x = w2 // 2
    first_row_y, last_row_y = h2 - 3 * tile // 2 - 8, h2 - tile // 2 - 4
    np.testing.assert_array_equal(two[first_row_y, x], [255, 255, 255])
    np.testing.assert_array_equal(two[last_row_y, x], [0, 0, 0])
    assert not list(tmp_path.glob("*.partial*"))


def test_save_collage_multiclass_label_maps(tmp_path) -> None:
    labels = np.zeros((32, 32), np.int64)
    labels[4:14, 4:14], labels[18:28, 4:14], labels[4:28, 18:28] = 1, 2, 3
    row = {"name": "anatomy", "image": np.random.default_rng(0).random((32, 32)), "pred": labels,
           "truth": labels, "score": 0.9}
    image = np.asarray(Image.open(save_collage([row], tmp_path / "multi.png", tile=64)).convert("RGB"))
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert {CLASS_COLOURS[0], CLASS_COLOURS[1], CLASS_COLOURS[2]} <= colours


def test_save_collage_without_truth_or_score(tmp_path) -> None:
    row = _row("no-truth", None, fill=True) | {"truth": None}
    assert save_collage([row], tmp_path / "c.png", tile=48).is_file()


# --------------------------------------------------------------------------- training curves


def _write_scalars(log_dir, scalars: dict[str, list[tuple[int, float]]], walltime: float = 1000.0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step, walltime=walltime + step)
    writer.close()


def test_plot_training_curves(tmp_path) -> None:
    loss = [(1, 0.9), (2, 0.6), (3, 0.4)]
    dice = [(1, 0.5), (2, 0.8), (3, 0.75)]
    _write_scalars(tmp_path / "logs", {"train_loss": loss, "val_mean_dice": dice, "lr": [(1, 1e-3)]})
    out = tmp_path / "curves.png"
    series = plot_training_curves(tmp_path / "logs", out)
    assert Image.open(out).size[0] > Image.open(out).size[1]  # two panels side by side
    assert [s for s, _ in series["loss"]] == [1, 2, 3]
    assert [v for _, v in series["loss"]] == pytest.approx([v for _, v in loss])
    assert [v for _, v in series["metric"]] == pytest.approx([v for _, v in dice])


def test_plot_training_curves_reads_subfolders_and_later_wall_time_wins(tmp_path) -> None:
    _write_scalars(tmp_path / "logs", {"val_mean_dice": [(1, 0.5), (2, 0.6)]}, walltime=1000.0)
    # A resumed run in a subfolder re-logs epoch 2 later and continues.
    _write_scalars(tmp_path / "logs" / "resumed", {"val_mean_dice": [(2, 0.7), (3, 0.8)]}, walltime=2000.0)
    series = plot_training_curves(tmp_path / "logs", tmp_path / "c.png")
    assert series["loss"] == []
    assert [s for s, _ in series["metric"]] == [1, 2, 3]
    assert [v for _, v in series["metric"]] == pytest.approx([0.5, 0.7, 0.8])


def test_plot_training_curves_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        plot_training_curves(tmp_path / "empty", tmp_path / "c.png")
    _write_scalars(tmp_path / "other", {"something_else": [(1, 1.0)]})
    with pytest.raises(ValueError, match="something_else"):
        plot_training_curves(tmp_path / "other", tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_curves_cli(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert cli(["curves", "--log_dir", str(tmp_path / "empty"), "--output_file", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "empty" in err and "Traceback" not in err

    _write_scalars(tmp_path / "logs", {"train_loss": [(1, 1.0), (2, 0.5)]})
    out = tmp_path / "c.png"
    assert cli(["curves", "--log_dir", str(tmp_path / "logs"), "--output_file", str(out), "--metric_tag", "val_dice"]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.is_file()


# --------------------------------------------------------------------------- report files


def test_write_report_round_trip(tmp_path) -> None:
    summary = {
        "mean_dice": np.float32(0.5),
        "per_class": np.array([0.25, np.nan]),
        "confusion": torch.tensor([[1, 2], [3, 4]]),
        "undefined": float("nan"),
        "n": np.int64(2),
    }
    per_case = [
        {"case": "a", "dice": 0.123456789},
        {"case": "b", "dice": np.float64("nan"), "hd95": torch.tensor(3.5)},
    ]
    json_path, csv_path = write_report(tmp_path / "out", summary, per_case)

    assert json.loads(json_path.read_text()) == {
        "mean_dice": 0.5,
        "per_class": [0.25, None],
        "confusion": [[1, 2], [3, 4]],
        "undefined": None,
        "n": 2,
    }
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["case", "dice", "hd95"], ["a", "0.123457", ""], ["b", "", "3.5"]]
    assert not list((tmp_path / "out").glob("*.partial*"))


def test_report_curves_come_from_the_models_own_run_or_none(tmp_path) -> None:
    """Evaluation never shows the curves of another run: without logs of the evaluated model's
    run, a training_curves.png left by an earlier evaluation is removed, not kept."""
    from xray_seg.shared.handlers import SegmentationReport

    out = tmp_path / "eval"
    out.mkdir()
    (out / "training_curves.png").write_bytes(b"stale picture of another run")
    SegmentationReport(str(out), ["background", "lung"], log_dir=None).write_curves()
    assert not (out / "training_curves.png").exists()
    logs = tmp_path / "logs"
    _write_scalars(logs, {"train_loss": [(1, 0.9), (2, 0.5)], "val_mean_dice": [(2, 0.7)]})
    SegmentationReport(str(out), ["background", "lung"], log_dir=str(logs)).write_curves()
    assert (out / "training_curves.png").stat().st_size > 1000


def test_report_lists_cases_by_name_with_their_own_scores(tmp_path) -> None:
    """Rows are sorted by case name (so that a distributed evaluation, whose ranks finish in
    any order, writes the same file as one process) and each keeps its own scores."""
    from ignite.engine import Engine
    from monai.data import MetaTensor

    from xray_seg.shared.handlers import SegmentationReport

    def case(name: str, hit: bool) -> dict:
        truth = torch.zeros(2, 8, 8)
        truth[1, 2:6, 2:6] = 1
        truth[0] = 1 - truth[1]
        pred = truth.clone() if hit else torch.flip(truth, dims=(1, 2)).roll(3, dims=1)
        image = MetaTensor(torch.rand(1, 8, 8), meta={"filename_or_obj": f"/data/{name}"})
        return {"image": image, "pred": pred, "label": truth}

    report = SegmentationReport(str(tmp_path), ["background", "lung"], collage_rows=4)
    engine = Engine(lambda _, batch: batch)
    report.attach(engine)
    engine.run([[case("c.png", True)], [case("a.png", False), case("b.png", True)]])
    with open(tmp_path / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], float(r["dice_lung"]) == 1.0) for r in rows] == [("a.png", False), ("b.png", True), ("c.png", True)]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and np.isclose(metrics["mean_dice"], np.mean([float(r["dice_lung"]) for r in rows]))
