"""The two-threshold baseline: exact supervised fit, ordering, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from xray_seg.tomography.threshold_baseline import apply_thresholds, fit_thresholds
from xray_seg.tomography.evaluation import scores


def _brute_force(image: np.ndarray, labels: np.ndarray, n: int = 300) -> float:
    """Best accuracy over all t1 < t2 on an n-point grid, per-pair and voxel by voxel."""
    grid = np.linspace(image.min(), image.max(), n)
    above = (image[None] > grid[:, None]).astype(np.uint8)  # (n, voxels)
    best = 0.0
    for i in range(n - 1):
        correct = (above[i][None] + above[i + 1:]) == labels[None]
        best = max(best, float(correct.mean(1).max()))
    return best


def _gaussian_classes(rng: np.random.Generator, n: int, means, sds, dtype=np.float64):
    labels = rng.choice(3, size=n, p=[0.3, 0.4, 0.3]).astype(np.uint8)
    image = rng.normal(np.asarray(means)[labels], np.asarray(sds)[labels])
    if np.issubdtype(dtype, np.integer):
        image = np.clip(np.rint(image), 0, np.iinfo(dtype).max)
    return image.astype(dtype), labels


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_separable_classes_are_recovered_exactly(dtype) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(6, 20, 20)).astype(np.uint8)
    ranges = np.array([[1000, 5000], [9000, 12000], [20000, 30000]])
    image = rng.uniform(ranges[labels, 0], ranges[labels, 1]).astype(dtype)
    t1, t2 = fit_thresholds(image, labels)
    assert 5000 <= t1 <= 9000 and 12000 <= t2 <= 20000
    prediction = apply_thresholds(image, (t1, t2))
    assert prediction.dtype == np.uint8 and prediction.shape == image.shape
    np.testing.assert_array_equal(prediction, labels)
    report = scores(prediction, labels, ["a", "b", "c"])
    assert report["accuracy"] == 1.0 and report["mean_dice"] == 1.0


@pytest.mark.parametrize("seed, dtype, sds", [(1, np.float64, (10, 12, 15)), (2, np.uint16, (300, 500, 400)),
                                              (3, np.float32, (30, 8, 20))])
def test_overlapping_classes_match_brute_force(seed: int, dtype, sds) -> None:
    rng = np.random.default_rng(seed)
    scale = 1 if dtype != np.uint16 else 30
    image, labels = _gaussian_classes(rng, 8_000, np.array([100, 125, 160]) * scale, sds, dtype)
    t1, t2 = fit_thresholds(image, labels)
    assert t1 < t2
    fitted = float((apply_thresholds(image, (t1, t2)) == labels).mean())
    brute = _brute_force(image, labels)
    assert fitted > 0.6  # overlapping, but not hopeless
    assert fitted >= brute - 0.002
    assert fitted <= brute + 0.002  # the grid is fine: no pair can be much better


def test_fit_is_exact_over_its_bins_and_reproduced_by_apply() -> None:
    # Integer image with few grey levels: every cut between levels is a candidate.
    rng = np.random.default_rng(4)
    image, labels = _gaussian_classes(rng, 5000, [10, 14, 17], [2, 2, 2], np.uint8)
    t1, t2 = fit_thresholds(image, labels)
    fitted = float((apply_thresholds(image, (t1, t2)) == labels).mean())
    levels = np.unique(image).astype(float) + 0.5
    best = max(float((((image > a).astype(np.uint8) + (image > b)) == labels).mean())
               for a in levels for b in levels if a < b)
    assert fitted == pytest.approx(best, abs=1e-12)


def test_thresholds_always_ordered() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        means = rng.uniform(0, 100, 3)  # any order, even classes in the "wrong" order
        image, labels = _gaussian_classes(rng, 500, means, rng.uniform(1, 30, 3))
        t1, t2 = fit_thresholds(image, labels, bins=int(rng.integers(2, 2000)))
        assert t1 < t2
    # Constant image: still two distinct thresholds.
    t1, t2 = fit_thresholds(np.full(30, 7, np.uint16), np.arange(30) % 3)
    assert t1 < t2


def test_large_volumes_are_subsampled() -> None:
    rng = np.random.default_rng(6)
    image, labels = _gaussian_classes(rng, 300_000, [100, 125, 160], [10, 12, 15])
    full = fit_thresholds(image, labels)
    sub = fit_thresholds(image, labels, max_voxels=50_000)
    assert sub != full
    acc = [float((apply_thresholds(image, t) == labels).mean()) for t in (full, sub)]
    assert acc[1] > acc[0] - 0.003


def test_input_errors() -> None:
    image = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    labels = (np.arange(60) % 3).reshape(3, 4, 5).astype(np.uint8)
    with pytest.raises(ValueError, match="shape"):
        fit_thresholds(image, labels[:, :, :4])
    with pytest.raises(ValueError, match="three classes"):
        fit_thresholds(image, np.minimum(labels, 1))  # two classes only
    with pytest.raises(ValueError, match="three classes"):
        fit_thresholds(image, labels * 127)  # 0/127/254: not mapped to classes
    with pytest.raises(ValueError, match="integer"):
        fit_thresholds(image, labels.astype(np.float32))
    with pytest.raises(ValueError, match="t1 < t2"):
        apply_thresholds(image, (5.0, 5.0))
