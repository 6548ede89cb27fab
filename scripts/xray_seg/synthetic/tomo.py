"""Synthetic three-phase X-ray tomography volumes of any size, with exact labels.

They imitate the solid oxide cell of ``soc_ptycho`` (ptychographic nano-tomography):
three interpenetrating phases, labelled 0 pores (dark), 1 zirconia (mid grey) and
2 nickel (bright), in roughly equal volume fractions with features of ~5-15 voxels.
The grey values come from a simulated scan of the label volume, slice by slice:
attenuation map with a slight within-phase texture, parallel-beam projections,
detector blur, Beer-Lambert transmission with Poisson photon noise, and filtered
back-projection. The images therefore carry real reconstruction artefacts (noise,
streaks from the sparse angles, blurred phase boundaries), not added noise only.

Volumes are generated and written slab by slab (``chunk`` slices at a time), so
peak memory depends on the slice size and the chunk, never on the depth: a
1024x1024 slice size needs ~1.4 GB at chunk 16 (measured peak RSS), whatever the
number of slices. Axis order is (z, y, x) throughout.

    xray-seg synthetic tomo --output_dir OUT [--shape 64 128 128] [--seed 0] [--format tiff|slices]
        [--chunk 16] [--n_angles N] [--photons P] [--device cpu|cuda] [--threads 1]
    xray-seg synthetic tomo --benchmark [--sizes 256 512 1024]

writes ``OUT/image.tif`` (uint16, values in about 16700..46900 like the real data)
and ``OUT/label.tif`` (uint8 0/1/2), or for ``--format slices`` the folders
``OUT/images/`` and ``OUT/labels/`` of ``slice_0001.tif``, ``slice_0002.tif``, ...

Projector (see PROJECTOR_TIMINGS): scikit-image's ``radon``/``iradon`` warp or
interpolate the whole image once per angle and would need ~4 h for 1024x1024x512
even at the sparse default angles. The projector here is vectorised torch with the
slices of a slab as the innermost axis: Joseph's ray-driven projection and linear
back-projection are gathers (``index_select``) plus ``lerp``, tiled so temporaries
stay in the CPU cache, and the ramp filter is an FFT. That is 7-13x faster than
scikit-image and 3-5x faster than rotating with ``grid_sample`` (4 interpolation
taps per sample instead of 2, and cache-busting temporaries); it runs on a GPU too.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy import integrate, ndimage, optimize, special
from tqdm import tqdm

from xray_seg.tomography.volume_io import SlabWriter, VolumeMeta

PHASES = ("pore", "zirconia", "nickel")
# Attenuation of pores, zirconia and nickel (arbitrary units, nickel = 1). Pores are
# not empty (infiltrated), and zirconia sits at 68% of the pore-nickel range, as the
# class means of the real soc_ptycho slices do (22500, 35000, 40900 of 16700..46900).
ATTENUATION = (0.10, 0.71, 1.00)
# Where the pore and nickel attenuations land in the uint16 range of the real data.
UINT16_RANGE = (16700.0, 46900.0)
_PORE_AT, _NICKEL_AT = 0.192, 0.800

# Mean chord length of a phase of the argmax-of-three-fields structure, per unit of
# smoothing sigma (measured: 7.2-8.3 voxels per phase along z, y and x of a 64x256x256
# volume with sigma 8/3, default fractions).
_CHORD_PER_SIGMA = 3.0
# Seeds of the per-slice white noise: SeedSequence([seed, stream, z + _Z_OFFSET]) so that
# halo slices above the volume (z < 0) have seeds too.
_Z_OFFSET = 1 << 32


# ----------------------------------------------------------------------------- labels


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1D Gaussian weights, radius ceil(4 sigma) (as scipy's default)."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


@functools.lru_cache(maxsize=32)
def phase_offsets(fractions: tuple[float, ...]) -> np.ndarray:
    """Offsets b_k such that argmax_k (g_k + b_k) of iid standard normal g_k has the
    given class probabilities: P(k) = integral phi(x) prod_{j!=k} Phi(x + b_k - b_j) dx."""
    fractions = np.asarray(fractions, np.float64)
    x = np.linspace(-9.0, 9.0, 3601)
    pdf = np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)

    def probs(b: np.ndarray) -> np.ndarray:
        cdf = special.ndtr(x[None, None] + (b[:, None] - b[None, :])[..., None])  # (k, j, x)
        cdf[np.arange(len(b)), np.arange(len(b))] = 1.0
        return integrate.trapezoid(pdf * cdf.prod(1), x, axis=-1)

    def residual(free: np.ndarray) -> np.ndarray:
        return probs(np.concatenate([[0.0], free]))[1:] - fractions[1:]

    sol = optimize.fsolve(residual, np.zeros(len(fractions) - 1), xtol=1e-10)
    return np.concatenate([[0.0], sol])


def _slice_noise(seed: int, stream: int, z: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng([seed, stream, z + _Z_OFFSET])
    return rng.standard_normal(shape, dtype=np.float32)


def _smooth_field(seed: int, stream: int, z0: int, shape: tuple[int, int, int], kernel: np.ndarray) -> np.ndarray:
    """Slices z0..z0+nz of a unit-variance Gaussian random field, a function of
    (seed, stream, z) only: white noise slices from per-slice seeds, smoothed with a
    separable Gaussian. The z-smoothing reads ``radius`` halo slices on either side,
    so any split into chunks gives the same values bit for bit. In-plane the field
    wraps around (stationary up to the edges, so the phase fractions hold there too)."""
    nz, ny, nx = shape
    radius = len(kernel) // 2
    field = np.zeros(shape, np.float32)
    for i, z in enumerate(range(z0 - radius, z0 + nz + radius)):
        noise = _slice_noise(seed, stream, z, (ny, nx))
        # Slice z contributes to output slices z - radius .. z + radius (kept ones only).
        for k in range(max(0, i - 2 * radius), min(nz, i + 1)):
            field[k] += np.float32(kernel[i - k]) * noise
    for axis in (1, 2):
        ndimage.correlate1d(field, kernel.astype(np.float32), axis=axis, output=field, mode="wrap")
    field *= np.float32(1.0 / math.sqrt(float((kernel**2).sum()) ** 3))  # known variance -> 1
    return field


def microstructure(shape: Sequence[int], seed: int, feature_size: float = 8.0,
                   fractions: Sequence[float] = (0.32, 0.36, 0.32), z0: int = 0) -> np.ndarray:
    """uint8 labels (0 pore, 1 zirconia, 2 nickel) of slices z0 .. z0+shape[0] of the
    volume with in-plane size shape[1:] and this ``seed``.

    Each phase k has its own smoothed Gaussian random field g_k; a voxel belongs to
    argmax_k (g_k + b_k), with fixed offsets b_k computed from the standard normal
    distribution (``phase_offsets``), not from the data, so every chunk uses the same
    rule and the expected fractions are exact. All three phases touch each other and
    percolate, as in a Ni-YSZ cermet. ``feature_size`` is about the mean chord length
    of a phase in voxels (sigma = feature_size / 3); the real soc_ptycho labels have
    mean chords of 25-40 voxels, so feature_size ~30 imitates their resolution. ``seed``
    is an integer, not a Generator: the field must be a function of (seed, z) for
    chunks to agree.
    """
    nz, ny, nx = (int(s) for s in shape)
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    if feature_size <= 0:
        raise ValueError(f"feature_size must be positive, got {feature_size}")
    kernel = _gaussian_kernel(feature_size / _CHORD_PER_SIGMA)
    offsets = phase_offsets(fractions)
    best = labels = None
    for k in range(3):
        field = _smooth_field(int(seed), k, int(z0), (nz, ny, nx), kernel)
        field += np.float32(offsets[k])
        if best is None:
            best, labels = field, np.zeros((nz, ny, nx), np.uint8)
        else:
            better = field > best
            labels[better] = k
            np.maximum(best, field, out=best)
    return labels


# ------------------------------------------------------------------------- tomography

# Seconds per slice, measured on 2 AMD EPYC cores busy with another training job, so
# torch on 1 thread (2 threads were slower under that contention); ranges over repeated
# runs. Default angles n/2; the labels add 0.01 / 0.04 / 0.17-0.19 s.
#   slice px  angles   this module    scikit-image radon + iradon
#   256       128      0.03-0.06      0.18 + 0.04
#   256       403      0.09-0.13      (pi/2 n: Nyquist angular sampling)
#   512       256      0.21-0.28      2.0 + 0.47
#   512       805      0.82-0.88
#   1024      512      1.9-2.0        22.8 + 4.1 (timed at 64 angles, x8)
# Projected at defaults: 512^3 ~2-3 min, 1024x1024x512 ~18 min (at Nyquist angles
# ~8 min and ~55 min). End to end through the CLI, 32x1024x1024 at chunk 16 took
# 2.0 s of CPU per slice (labels, scan, uint16, TIFF writing) and 1.36 GB peak RSS.
PROJECTOR_TIMINGS = {256: 0.06, 512: 0.28, 1024: 2.0}  # s/slice at default angles, upper figures


def default_n_angles(n: int) -> int:
    """Projections per slice for slices of ``n`` pixels: n/2 rounded up to a multiple of 8.

    Nyquist angular sampling would be pi/2 * n (1609 for 1024 px); n/2 is ~3x sparser,
    which costs ~3x less time and leaves visible view-aliasing streaks, as sparse
    ptychographic scans do. See PROJECTOR_TIMINGS for what each choice costs."""
    return max(32, 8 * math.ceil(n / 16))


def _ramp_filter(size: int) -> torch.Tensor:
    """Ram-Lak filter (rfft half) built from its spatial kernel, as scikit-image does,
    so that it has no DC offset on a finite detector."""
    n = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * n) ** 2
    return torch.from_numpy(2.0 * np.real(np.fft.rfft(h))).float()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, then restore the previous number."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _tile(device: torch.device, per_unit: int) -> int:
    """Units (rows, ray steps) per vectorised step so that the temporaries stay in the CPU
    cache (~2 MB): untiled, a 1024 px slab makes 64 MB temporaries per angle and runs
    ~4x slower. On a GPU, big tiles only save kernel launches."""
    budget = 2**24 if device.type == "cuda" else 2**19
    return max(1, budget // max(per_unit, 1))


def project(images: torch.Tensor, thetas: torch.Tensor, n_det: int) -> torch.Tensor:
    """Parallel-beam line integrals (pixel units) of slices (B, H, W) at angles ``thetas``
    -> sinograms (B, A, n_det); detector coordinate t = x cos + y sin from the slice centre.

    Joseph's ray-driven projector: a ray steps through the rows (or, for rays closer to
    the x axis, the columns) and takes the linearly interpolated value at each crossing,
    times the step length 1/|cos| (1/|sin|). Slices are the innermost axis, so one
    ``index_select`` fetches the two neighbours for all slices at once."""
    b, h, w = images.shape
    dev = images.device
    rows = torch.zeros(h, w + 3, b, device=dev, dtype=images.dtype)  # zero-padded x: 1 left, 2 right
    rows[:, 1:w + 1] = images.permute(1, 2, 0)
    cols = torch.zeros(w, h + 3, b, device=dev, dtype=images.dtype)
    cols[:, 1:h + 1] = images.permute(2, 1, 0)
    rows, cols = rows.reshape(-1, b), cols.reshape(-1, b)
    det = torch.arange(n_det, device=dev, dtype=torch.float32) - (n_det - 1) / 2
    sino = torch.zeros(len(thetas), n_det, b, device=dev, dtype=images.dtype)
    for a, theta in enumerate(thetas.tolist()):
        c, s = math.cos(theta), math.sin(theta)
        if abs(c) >= abs(s):  # step along y: x = (t - y sin) / cos
            flat, n_step, n_len, p, q = rows, h, w, c, s
        else:  # step along x: y = (t - x cos) / sin
            flat, n_step, n_len, p, q = cols, w, h, s, c
        half = (w * abs(c) + h * abs(s)) / 2 + 1  # detector half-width that meets the slice
        lo = max(0, math.floor((n_det - 1) / 2 - half))
        hi = min(n_det, math.ceil((n_det - 1) / 2 + half) + 1)
        t = det[lo:hi, None]
        # float64 sums: the result must not depend on the batch size or the tiling (their
        # float32 rounding differs), or a Poisson draw downstream can change.
        acc = torch.zeros(hi - lo, b, device=dev, dtype=torch.float64)
        step = _tile(dev, (hi - lo) * b)
        for k0 in range(0, n_step, step):
            kk = torch.arange(k0, min(n_step, k0 + step), device=dev)
            pos = ((t - (kk[None].float() - (n_step - 1) / 2) * q) / p + (n_len - 1) / 2).clamp_(-1, n_len) + 1
            i0 = pos.floor()
            idx = (i0.long() + kk[None] * (n_len + 3)).reshape(-1)  # outside: zero padding
            v = torch.lerp(flat.index_select(0, idx), flat.index_select(0, idx + 1), (pos - i0).reshape(-1, 1))
            acc += v.reshape(hi - lo, len(kk), b).sum(1, dtype=torch.float64)
        sino[a, lo:hi] = acc / abs(p)
    return sino.permute(2, 0, 1)


def back_project(sinograms: torch.Tensor, thetas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Back-projection of (filtered) sinograms (B, A, D) onto (B, H, W): the value at
    t = x cos + y sin, linearly interpolated in the detector, summed over angles and
    scaled by pi / (2A) as in FBP. Tiled over rows so the accumulator stays in cache."""
    b, n_ang, n_det = sinograms.shape
    dev = sinograms.device
    padded = torch.zeros(n_ang, n_det + 2, b, device=dev, dtype=sinograms.dtype)
    padded[:, 1:n_det + 1] = sinograms.permute(1, 2, 0)
    padded = padded.reshape(-1, b)
    x = torch.arange(width, device=dev, dtype=torch.float32)[None, :] - (width - 1) / 2
    trig = [(math.cos(t), math.sin(t)) for t in thetas.tolist()]
    out = torch.zeros(height * width, b, device=dev, dtype=sinograms.dtype)
    step = _tile(dev, width * b)
    for r0 in range(0, height, step):
        r1 = min(height, r0 + step)
        y = torch.arange(r0, r1, device=dev, dtype=torch.float32)[:, None] - (height - 1) / 2
        acc = torch.zeros((r1 - r0) * width, b, device=dev, dtype=sinograms.dtype)
        for a, (c, s) in enumerate(trig):
            # padded detector index of t, offset to angle a's row (t stays inside: D >= diagonal)
            pos = (x * c + (y * s + ((n_det - 1) / 2 + 1 + a * (n_det + 2)))).reshape(-1)
            i0 = pos.floor()
            idx = i0.long()
            acc += torch.lerp(padded.index_select(0, idx), padded.index_select(0, idx + 1), (pos - i0)[:, None])
        out[r0 * width:r1 * width] = acc
    return out.reshape(height, width, b).permute(2, 0, 1) * (math.pi / (2 * n_ang))


def fbp(sinograms: torch.Tensor, thetas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Filtered back-projection with the ramp filter (FFT, zero-padded to >= 2D)."""
    n_det = sinograms.shape[-1]
    size = max(64, 1 << math.ceil(math.log2(2 * n_det)))
    spectrum = torch.fft.rfft(sinograms, n=size, dim=-1) * _ramp_filter(size).to(sinograms.device)
    filtered = torch.fft.irfft(spectrum, n=size, dim=-1)[..., :n_det]
    return back_project(filtered.contiguous(), thetas, height, width)


def detector_size(height: int, width: int) -> int:
    """Detector bins that cover the slice's diagonal, plus a margin for the blur.

    Circle of reconstruction: the object is the whole (square) slice in vacuum and the
    detector spans its diagonal at every angle, so no ray misses the object and FBP is
    valid in the full slice, corners included; no circular mask is needed."""
    return math.ceil(math.hypot(height, width)) + 4


def simulate_tomography(labels_slab: np.ndarray, rng: np.random.Generator, n_angles: int | None = None,
                        photons: float | None = None, attenuation: Sequence[float] = ATTENUATION,
                        texture: float = 0.02, blur: float = 0.8, path_attenuation: float = 1.0,
                        device: str | torch.device | None = None, threads: int | None = 1) -> np.ndarray:
    """Simulated reconstruction (float32, same shape, attenuation units) of each slice of
    ``labels_slab`` (z, y, x) or a single slice (y, x).

    Per slice: attenuation map ``attenuation[label]`` plus smooth Gaussian texture of
    ``texture`` x (nickel - pore) standard deviation; ``n_angles`` parallel projections
    over [0, pi) (default ``default_n_angles``); Gaussian detector blur of ``blur``
    pixels (finite resolution: soft phase boundaries); attenuation scaled so that a ray
    across the slice width through pore-zirconia-nickel mix loses ``path_attenuation``
    (1.0: ~37% transmission); Poisson counts at ``photons`` incident photons per
    detector pixel and angle; -log back to line integrals; FBP; scaled back.

    ``photons=None`` picks ``default_photons``: the noise level, relative to the phase
    contrast, is then the same at every slice size and angle count. Each slice draws
    from its own generator, seeded from ``rng`` in slice order, so passing one
    Generator through consecutive slabs gives the same volume whatever the slab size.

    ``threads``: torch CPU threads for the projector (restored afterwards; None keeps
    torch's setting). The default 1 is deliberate: with another job on the cores, 2
    threads ran 10-70x slower than 1 (threads waiting on each other), and on an idle
    2-core machine they could at best halve the time. Run generators in parallel to
    use more cores, or raise ``threads`` on a large idle machine.
    """
    labels_slab = np.asarray(labels_slab)
    single = labels_slab.ndim == 2
    slab = labels_slab[None] if single else labels_slab
    if slab.ndim != 3:
        raise ValueError(f"labels_slab must be (z, y, x) or (y, x), got shape {labels_slab.shape}")
    nz, ny, nx = slab.shape
    att = np.asarray(attenuation, np.float32)
    if att.shape != (3,):
        raise ValueError(f"attenuation needs one value per phase (3), got {attenuation}")
    n_angles = default_n_angles(max(ny, nx)) if n_angles is None else int(n_angles)
    photons = default_photons(ny, nx, n_angles) if photons is None else float(photons)
    dev = torch.device(device) if device is not None else torch.device("cpu")

    # One generator per slice, seeded by one raw draw each in slice order: the draws of
    # a slice do not depend on how the volume is cut into slabs.
    slice_rngs = [np.random.default_rng(int(v)) for v in rng.bit_generator.random_raw(nz)]
    contrast = float(att.max() - att.min())
    mu = att[slab]  # (z, y, x) float32
    if texture > 0:
        kern = _gaussian_kernel(1.5).astype(np.float32)
        norm = np.float32(texture * contrast / math.sqrt(float((kern.astype(np.float64) ** 2).sum()) ** 2))
        for k in range(nz):
            noise = slice_rngs[k].standard_normal((ny, nx), dtype=np.float32)
            noise = ndimage.correlate1d(noise, kern, axis=0, mode="wrap")
            noise = ndimage.correlate1d(noise, kern, axis=1, mode="wrap")
            mu[k] += norm * noise
    # Line integrals in "per pixel" units times scale: mean path attenuation fixed.
    scale = path_attenuation / (float(att.mean()) * math.sqrt(ny * nx))

    thetas = torch.arange(n_angles, dtype=torch.float64) * (math.pi / n_angles)
    n_det = detector_size(ny, nx)
    with torch.no_grad(), torch_threads(threads if dev.type == "cpu" else None):
        sino_np = (project(torch.from_numpy(mu).to(dev), thetas.float(), n_det) * scale).double().cpu().numpy()
        if blur > 0:  # detector / probe resolution; beyond the object the line integrals are 0
            sino_np = ndimage.correlate1d(sino_np, _gaussian_kernel(blur), axis=-1, mode="constant")
        for k in range(nz):
            counts = slice_rngs[k].poisson(photons * np.exp(-sino_np[k]))
            sino_np[k] = np.log(photons / np.maximum(counts, 1))
        line = torch.from_numpy(sino_np.astype(np.float32)).to(dev)
        recon = fbp(line, thetas.float().to(dev), ny, nx) / scale
    out = recon.cpu().numpy().astype(np.float32)
    return out[0] if single else out


# Noise calibration: photons at 256x256 px and 128 angles. Within-phase standard deviation
# (2+ voxels from boundaries) is then ~0.048 = 17% of the zirconia-nickel gap at every
# size (measured at 128, 256, 512 px), from photon noise ~0.03, view-aliasing streaks and
# edge ringing ~0.035 and texture ~0.02; the real soc_ptycho slices have ~12% (interior
# std ~740 for a gap of ~6300).
_PHOTONS_REF = 2.0e5


def default_photons(height: int, width: int, n_angles: int) -> float:
    """Incident photons per detector pixel and angle giving the same relative noise at
    every size: FBP noise ~ n / sqrt(photons * n_angles) (in attenuation units, with the
    attenuation scaled to the slice width n), so photons ~ n^2 / n_angles."""
    n = math.sqrt(height * width)
    return _PHOTONS_REF * (n / 256.0) ** 2 * (128.0 / n_angles)


def intensity_window(attenuation: Sequence[float] = ATTENUATION) -> tuple[float, float]:
    """(lo, hi) reconstruction values that ``to_uint16`` maps to 16700 and 46900: the
    pore and nickel attenuations land at 19% and 80% of that range, as the class means
    of the real data do."""
    a0, a2 = float(min(attenuation)), float(max(attenuation))
    span = (a2 - a0) / (_NICKEL_AT - _PORE_AT)
    lo = a0 - _PORE_AT * span
    return lo, lo + span


def to_uint16(recon: np.ndarray, lo: float, hi: float,
              out_range: tuple[float, float] = UINT16_RANGE) -> np.ndarray:
    """Map reconstruction values lo..hi linearly onto ``out_range`` (default 16700..46900,
    the range of the real soc_ptycho slices), round and clip to 0..65535."""
    if not hi > lo:
        raise ValueError(f"need hi > lo, got lo={lo}, hi={hi}")
    a, b = out_range
    scaled = (np.asarray(recon, np.float64) - lo) * ((b - a) / (hi - lo)) + a
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


# ----------------------------------------------------------------------------- writing


def _writer(stack: contextlib.ExitStack, final: Path, fmt: str, shape: tuple[int, int, int], dtype) -> SlabWriter:
    """A slab writer for ``final`` (multi-page TIFF or a folder of slice_0001.tif ...),
    renamed into place when ``stack`` closes cleanly."""
    width = max(4, len(str(shape[0])))
    names = [f"slice_{z:0{width}d}.tif" for z in range(1, shape[0] + 1)] if fmt == "slices" else None
    meta = VolumeMeta(fmt, shape, dtype, source="synthetic", slice_names=names)
    return stack.enter_context(SlabWriter(final, meta, dtype=dtype))


def generate_volume(out_dir: str | os.PathLike, shape: Sequence[int] = (64, 128, 128), seed: int = 0,
                    fmt: str = "tiff", chunk: int = 16, n_angles: int | None = None,
                    photons: float | None = None, feature_size: float = 8.0,
                    fractions: Sequence[float] = (0.32, 0.36, 0.32), device: str | None = None,
                    threads: int | None = 1, progress: bool = True) -> dict[str, str]:
    """Write a synthetic volume of ``shape`` (z, y, x) chunk by chunk; return
    dict(image=path, label=path).

    ``fmt='tiff'``: ``OUT/image.tif`` (uint16) and ``OUT/label.tif`` (uint8 0/1/2),
    multi-page, BigTIFF above 2 GiB. ``fmt='slices'``: folders ``OUT/images`` and
    ``OUT/labels`` of ``slice_0001.tif`` ... Outputs appear under their final names
    only when complete. Both the labels and the image of slice z depend on (seed, z)
    only, bit for bit, not on ``chunk``.
    """
    if fmt not in ("tiff", "slices"):
        raise ValueError(f"fmt must be 'tiff' or 'slices', got {fmt!r}")
    nz, ny, nx = (int(s) for s in shape)
    if min(nz, ny, nx) < 1 or chunk < 1:
        raise ValueError(f"shape and chunk must be positive, got shape={tuple(shape)}, chunk={chunk}")
    out = Path(out_dir)
    names = {"tiff": ("image.tif", "label.tif"), "slices": ("images", "labels")}[fmt]
    paths = {"image": out / names[0], "label": out / names[1]}
    lo, hi = intensity_window(ATTENUATION)
    rng = np.random.default_rng([int(seed), 1])  # the scan's noise; labels use seed directly
    with contextlib.ExitStack() as stack:
        image_out = _writer(stack, paths["image"], fmt, (nz, ny, nx), np.uint16)
        label_out = _writer(stack, paths["label"], fmt, (nz, ny, nx), np.uint8)
        bar = stack.enter_context(tqdm(total=nz, unit="slice", desc=f"synthetic {nz}x{ny}x{nx}",
                                       disable=not progress))
        for z0 in range(0, nz, chunk):
            depth = min(chunk, nz - z0)
            labels = microstructure((depth, ny, nx), seed, feature_size, fractions, z0=z0)
            recon = simulate_tomography(labels, rng, n_angles=n_angles, photons=photons, device=device,
                                        threads=threads)
            image_out.write(z0, to_uint16(recon, lo, hi))
            label_out.write(z0, labels)
            del labels, recon  # before the next chunk is made: one chunk in memory at a time
            bar.update(depth)
    return {key: str(path) for key, path in paths.items()}


# ---------------------------------------------------------------------------- CLI


def benchmark(sizes: Sequence[int] = (256, 512, 1024), n_slices: int = 4, n_angles: int | None = None,
              device: str | None = None, threads: int | None = 1) -> dict[int, dict[str, float]]:
    """Seconds per slice of labels and of the simulated scan at each square slice size,
    and the projected time of a volume of 512 such slices."""
    results = {}
    for n in sizes:
        start = time.perf_counter()
        labels = microstructure((n_slices, n, n), 0)
        mid = time.perf_counter()
        simulate_tomography(labels, np.random.default_rng(0), n_angles=n_angles, device=device, threads=threads)
        end = time.perf_counter()
        per_slice = {"labels_s": (mid - start) / n_slices, "scan_s": (end - mid) / n_slices}
        per_slice["depth512_min"] = 512 * (per_slice["labels_s"] + per_slice["scan_s"]) / 60
        results[n] = per_slice
        print(f"{n} px, {n_angles or default_n_angles(n)} angles, {threads or torch.get_num_threads()} threads: "
              f"labels {per_slice['labels_s']:.3f} s/slice, scan {per_slice['scan_s']:.3f} s/slice, "
              f"512 slices ~{per_slice['depth512_min']:.1f} min", flush=True)
    return results
