"""Synthetic chest-radiograph-like images with exact lung masks (Montgomery layout).

The README quick start trains, evaluates and infers on this dataset so that the whole
workflow runs without external data. Each case is a PA view (row 0 = top, column 0 =
left; the patient's right lung is on the image left): a bright body silhouette, two dark
lungs drawn from jittered, smoothed control polygons, a bright mediastinum and heart,
ribs, clavicles, a low-frequency gradient and noise. The mask is the exact union of the
two lung polygons, so it always has two connected components.

    xray-seg synthetic cxr --output_dir OUT_DIR [--n_cases 24] [--size 256] [--seed 0] [--bit_depth 8]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from xray_seg.shared.atomic import atomic_path

# Control polygons (x, y in [0, 1]) of the image-left lung (patient right) and of the
# image-right lung (patient left, stored mirrored so both read "outer = small x").
# Clockwise from the apex: mediastinal border, cardiophrenic angle, diaphragm dome,
# costophrenic angle (sharp, bottom outer), lateral wall. The patient-left lung has the
# heart bulging into its lower inner border and a lower hemidiaphragm.
RIGHT_LUNG = np.array([
    (0.33, 0.13), (0.40, 0.17), (0.43, 0.28), (0.44, 0.42), (0.43, 0.56), (0.42, 0.68),
    (0.37, 0.66), (0.30, 0.665), (0.22, 0.70), (0.15, 0.77), (0.14, 0.64), (0.15, 0.48),
    (0.18, 0.32), (0.24, 0.19),
])
LEFT_LUNG = np.array([
    (0.33, 0.13), (0.40, 0.17), (0.43, 0.28), (0.43, 0.38), (0.39, 0.48), (0.35, 0.60),
    (0.32, 0.72), (0.28, 0.705), (0.22, 0.72), (0.15, 0.80), (0.14, 0.66), (0.15, 0.48),
    (0.18, 0.32), (0.24, 0.19),
])


def _smooth_closed(points: np.ndarray, n: int = 400, sigma_frac: float = 0.012) -> np.ndarray:
    """Resample a closed polygon evenly by arc length and round its corners.

    Gaussian smoothing with wrap-around keeps the curve closed and, unlike an
    interpolating spline, never overshoots the jittered control points.
    """
    closed = np.vstack([points, points[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    s = np.linspace(0.0, arc[-1], n, endpoint=False)
    curve = np.stack([np.interp(s, arc, closed[:, k]) for k in (0, 1)], axis=1)
    return ndimage.gaussian_filter1d(curve, sigma_frac * n, axis=0, mode="wrap")


def _lung_polygon(rng: np.random.Generator, template: np.ndarray, mirror: bool,
                  centre: np.ndarray, scale: np.ndarray, angle: float) -> np.ndarray:
    """One lung outline in normalised image coordinates, randomised per case."""
    pts = template + rng.normal(0.0, 0.008, template.shape)  # shape variability
    pts = (pts - [0.5, 0.45]) * rng.uniform(0.95, 1.05, 2)  # per-lung size asymmetry
    if mirror:
        pts[:, 0] = -pts[:, 0]
    c, s = np.cos(angle), np.sin(angle)
    pts = pts * scale @ np.array([[c, s], [-s, c]]) + centre
    return _smooth_closed(pts)


def synthesize_case(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (image in [0, 1] float32, lung mask bool), both shaped (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    centre = np.array([0.5, 0.45]) + rng.uniform(-0.04, 0.04, 2)
    scale = rng.uniform(0.85, 1.08, 2)
    angle = rng.uniform(-0.06, 0.06)
    cx, cy = centre

    mask = np.zeros((size, size), bool)
    for template, mirror in ((RIGHT_LUNG, False), (LEFT_LUNG, True)):
        outline = _lung_polygon(rng, template, mirror, centre, scale, angle) * size
        rr, cc = fill_polygon(outline[:, 1], outline[:, 0], (size, size))
        mask[rr, cc] = True
    # Blurred copies give soft, anti-aliased edges in the image while the mask stays exact.
    px = size / 256.0
    lung = ndimage.gaussian_filter(mask.astype(np.float32), 1.2 * px)

    # Body: shoulders/torso superellipse plus a neck, smoothed into a soft skin edge.
    half_w = rng.uniform(0.41, 0.46) * scale[0]
    torso = (np.abs((xx - cx) / half_w) ** 6 + np.abs((yy - cy) / scale[1] / 0.9 - 0.55) ** 3) < 1
    neck = (np.abs(xx - cx) < 0.09 * scale[0]) & (yy < cy)
    body = ndimage.gaussian_filter((torso | neck).astype(np.float32), 2.0 * px)
    thickness = np.clip(1 - ((xx - cx) / half_w) ** 2, 0, 1)  # more tissue near the midline
    img = rng.uniform(0.02, 0.10) + body * (rng.uniform(0.50, 0.62) + 0.12 * thickness)

    # Mediastinum: spine band and heart, only where there is no lung in front of them.
    spine = np.exp(-(((xx - cx) / (0.04 * scale[0])) ** 4)) * body
    heart = ((xx - cx - 0.04 * scale[0]) / 0.17) ** 2 + ((yy - cy - 0.14 * scale[1]) / 0.13) ** 2
    img += (rng.uniform(0.08, 0.16) * spine
            + rng.uniform(0.06, 0.14) * ndimage.gaussian_filter((heart < 1).astype(np.float32), 3 * px)
            ) * (1 - lung)

    # Lungs: air makes them dark; contrast varies per case, vessels brighten the hila
    # and a fine texture mimics lung markings.
    hila = sum(np.exp(-(((xx - cx - d * 0.1 * scale[0]) / 0.07) ** 2 + ((yy - cy) / 0.09) ** 2))
               for d in (-1, 1))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 2.0 * px)
    texture *= 0.015 / (texture.std() + 1e-8)
    img += lung * body * (-rng.uniform(0.18, 0.36) + rng.uniform(0.05, 0.10) * hila + texture)

    # Ribs: posterior arcs that leave the spine and curve down laterally across the lungs.
    u = np.abs(xx - cx)[None] / scale[0]
    y0 = (cy - 0.36 * scale[1] + np.arange(10)[:, None, None] * 0.068 * scale[1]
          + rng.normal(0, 0.004, (10, 1, 1)))
    arcs = y0 - 0.15 * u + 1.5 * u ** 2 + np.sign(xx - cx)[None] * np.sin(angle) * u
    ribs = np.exp(-(((yy[None] - arcs) / (0.011 * scale[1])) ** 2)) * ((u > 0.04) & (u < 0.42))
    img += rng.uniform(0.03, 0.07) * ribs.sum(0) * body

    # Clavicles: bright bars rising from the manubrium towards the shoulders.
    for side in (-1, 1):
        p0 = np.array([cx + side * 0.04, cy - 0.26 * scale[1]])
        p1 = np.array([cx + side * 0.32 * scale[0], cy - 0.31 * scale[1]])
        seg = p1 - p0
        t = np.clip(((xx - p0[0]) * seg[0] + (yy - p0[1]) * seg[1]) / (seg @ seg), 0, 1)
        dist = np.hypot(xx - p0[0] - t * seg[0], yy - p0[1] - t * seg[1])
        img += rng.uniform(0.10, 0.16) * np.exp(-((dist / 0.018) ** 2)) * body

    # Acquisition: low-frequency gradient, exposure/gamma, quantum noise, detector blur.
    img += rng.uniform(-0.06, 0.06) * (xx - 0.5) + rng.uniform(-0.06, 0.06) * (yy - 0.5)
    img = np.clip(img * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.04), 0, 1)
    img = img ** rng.uniform(0.8, 1.25) + rng.normal(0, rng.uniform(0.01, 0.03), img.shape)
    img = ndimage.gaussian_filter(img, 0.6 * px)
    return np.clip(img, 0, 1).astype(np.float32), mask


def _to_png(image01: np.ndarray, bit_depth: int) -> Image.Image:
    if bit_depth == 8:
        return Image.fromarray(np.round(image01 * 255).astype(np.uint8))
    # 12-bit-like detector range stored in 16 bits, as many DICOM-derived PNGs are.
    return Image.fromarray(np.round(500 + image01 * 3500).astype(np.uint16))  # mode I;16


def generate_dataset(out_dir: str | os.PathLike, n_cases: int = 24, size: int = 256,
                     seed: int = 0, bit_depth: int = 8) -> list[str]:
    """Write OUT/images/<name>.png and OUT/masks/<name>.png; return the case names."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n_cases):
        name = f"synth_{i:04d}"
        image, mask = synthesize_case(rng, size)
        with atomic_path(out / "images" / f"{name}.png") as tmp:
            _to_png(image, bit_depth).save(tmp)
        with atomic_path(out / "masks" / f"{name}.png") as tmp:
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp)
        names.append(name)
    return names
