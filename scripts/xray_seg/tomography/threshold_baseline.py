"""Two global intensity thresholds: the baseline every tomography segmentation must beat.

Three phases ordered by brightness (0 < 1 < 2, e.g. pores < zirconia < nickel) are
predicted as ``(image > t1) + (image > t2)``. ``fit_thresholds`` chooses t1 < t2 that
maximise the voxel accuracy on a training volume with its labels, exactly over the
candidate cuts of a fine histogram, in O(bins): with C_k[i] the number of class-k
voxels in bins below cut i, the accuracy of cuts i < j is

    C_0[i] + (C_1[j] - C_1[i]) + (N_2 - C_2[j]) = f(i) + g(j) + N_2,
    f(i) = C_0[i] - C_1[i],   g(j) = C_1[j] - C_2[j],

so the best pair is max_j (g(j) + max_{i<j} f(i)), a running maximum.

    xray-seg baseline tomo [--datalist data_manifests/soc_ptycho.json]
        [--dataset_dir ../shared/data/soc_ptycho] [--output_dir runs/threshold_baseline]

fits on the manifest's training split, scores the testing split as the bundle's
evaluation scores the model, prints a summary and writes baseline_metrics.json.
"""

from __future__ import annotations

import numpy as np

# Volumes above this many voxels are fitted on a random subsample of this size (fixed
# seed): 50M voxels give the accuracy of any threshold pair to ~1e-4 (binomial standard
# error at most 0.5/sqrt(5e7)), and the histogram pass then takes seconds, not minutes.
MAX_VOXELS = 50_000_000


def _sample(image: np.ndarray, labels: np.ndarray, max_voxels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} and labels shape {labels.shape} differ")
    if image.size > max_voxels:
        idx = np.random.default_rng(seed).integers(0, image.size, size=max_voxels)
        return image.reshape(-1)[idx], labels.reshape(-1)[idx]
    return image.reshape(-1), labels.reshape(-1)


def fit_thresholds(image: np.ndarray, labels: np.ndarray, bins: int = 1024,
                   max_voxels: int = MAX_VOXELS, seed: int = 0) -> tuple[float, float]:
    """Thresholds t1 < t2 that maximise the voxel accuracy of ``(image > t1) + (image > t2)``
    against ``labels`` (values 0, 1, 2, all present; class 1 must lie between 0 and 2
    in brightness for the result to be useful).

    ``image`` may be any integer or float array; it is cut into ``bins`` equal bins
    over its range (for integer images, at half-integers, and never finer than one
    grey level), and the optimum is exact over cuts between bins. Each threshold is
    placed midway between the brightest voxel below its cut and the darkest one
    above it, so the training accuracy is reproduced exactly by ``apply_thresholds``.
    Volumes above ``max_voxels`` are subsampled at random (``seed``), see MAX_VOXELS.
    """
    values, classes = _sample(image, labels, max_voxels, seed)
    if values.size == 0:
        raise ValueError("empty image")
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"image must be integer or float, got {values.dtype}")
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of classes 0, 1, 2, got {classes.dtype}")
    lo, hi = int(classes.min()), int(classes.max())
    counts = np.bincount(classes, minlength=3) if lo >= 0 and hi <= 2 else None
    if counts is None or np.count_nonzero(counts) < 3:
        found = np.unique(classes)[:10].tolist()
        raise ValueError(f"labels must hold exactly the three classes 0, 1, 2, found {found}"
                         " (map e.g. 0/128/255 to 0/1/2 first)")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError("image holds NaN or infinite values")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")

    # Bin index of every voxel: monotone in the value, so every cut between bins is a
    # threshold on the value.
    vmin, vmax = values.min(), values.max()
    if np.issubdtype(values.dtype, np.integer):
        width = max(1, -(-(int(vmax) - int(vmin) + 1) // bins))  # whole grey levels per bin
        index = (values.astype(np.int64) - int(vmin)) // width
    else:
        span = float(vmax) - float(vmin)
        width = span / bins if span > 0 else 1.0
        index = np.minimum(((values.astype(np.float64) - float(vmin)) / width).astype(np.int64), bins - 1)
    n_bins = int(index.max()) + 1
    hist = np.bincount(index * 3 + classes, minlength=3 * n_bins).reshape(n_bins, 3).T  # (3, bins)
    occupied = np.flatnonzero(hist.sum(0))
    hist = hist[:, occupied]  # cuts between occupied bins only: both sides of a cut hold voxels
    below = np.concatenate([np.zeros((3, 1), np.int64), np.cumsum(hist, axis=1)], axis=1)  # C_k[cut]

    m = hist.shape[1]  # cuts 0..m; t1 at cut i, t2 at cut j, 0 <= i < j <= m
    f = below[0] - below[1]
    g = below[1] - below[2]
    best_f = np.maximum.accumulate(f)  # best_f[j - 1] = max_{i < j} f(i)
    score = g[1:] + best_f[:-1]  # for j = 1..m
    j = int(np.argmax(score)) + 1
    i = int(np.argmax(f[:j]))
    return _threshold_at(values, index, occupied, i, m), _threshold_at(values, index, occupied, j, m)


def _threshold_at(values: np.ndarray, index: np.ndarray, occupied: np.ndarray, cut: int, m: int) -> float:
    """A value between the voxels of occupied bins < cut and those >= cut."""
    if cut == 0:
        return float(values.min()) - 1.0
    if cut == m:
        return float(values.max()) + 1.0
    upper = values[index >= occupied[cut]]
    lower = values[index < occupied[cut]]
    return (float(lower.max()) + float(upper.min())) / 2


def apply_thresholds(image: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    """uint8 labels ``(image > t1) + (image > t2)``: 0 below t1, 1 between, 2 above t2."""
    t1, t2 = (float(t) for t in thresholds)
    if not t1 < t2:
        raise ValueError(f"need t1 < t2, got {thresholds}")
    image = np.asarray(image)
    out = (image > t1).view(np.uint8)
    out += image > t2
    return out
