"""Figures for reviewing segmentations: overlays, per-case collages and training curves.

Shared by the 2D and 3D bundles, so nothing here assumes a number of classes: binary masks
and integer label maps (0 = background, 1..K = classes) are both accepted.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from xray_seg.shared.atomic import atomic_path

Colour = tuple[int, int, int]

RED: Colour = (255, 0, 0)
BLUE: Colour = (0, 90, 255)
# Classes 1..8; a well-separated qualitative palette (Trubetskoy's "distinct colours").
CLASS_COLOURS: list[Colour] = [
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (255, 225, 25),  # yellow
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
]

_GAP = 4  # pixels between tiles and around the collage
_BACKGROUND: Colour = (24, 24, 24)
_TEXT: Colour = (235, 235, 235)


def to_display(image: np.ndarray) -> np.ndarray:
    """2D image -> uint8 grey, stretching the 1st..99th percentile to 0..255.

    The percentiles ignore a few extreme pixels (burned-in text, collimator edges). When
    they coincide (mostly-constant image) the full min..max range is used instead; a
    constant image gives zeros. Non-finite pixels become 0.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {img.shape}")
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(finite, (1, 99))
    if hi <= lo:
        lo, hi = finite.min(), finite.max()
        if hi <= lo:
            return np.zeros(img.shape, np.uint8)
    scaled = np.nan_to_num(np.clip((img - lo) / (hi - lo), 0.0, 1.0), nan=0.0)
    return np.round(scaled * 255).astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
    # Erosion pads with background, so masks touching the image edge are outlined there too.
    return mask ^ ndimage.binary_erosion(mask)


def _as_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
    return mask


def _class_masks(label_map: np.ndarray, colours: Sequence[Colour]) -> list[tuple[np.ndarray, Colour]]:
    # Class c gets colours[c - 1]; the palette repeats for more classes than colours.
    label_map = np.asarray(label_map)
    classes = [int(c) for c in np.unique(label_map) if c > 0]
    return [(label_map == c, colours[(c - 1) % len(colours)]) for c in classes]


def _draw_outlines(rgb: np.ndarray, masks: Sequence[tuple[np.ndarray, Colour]]) -> None:
    for mask, colour in masks:
        rgb[_boundary(_as_mask(mask, rgb.shape[:2]))] = colour


def overlay(
    image: np.ndarray,
    masks: Sequence[tuple[np.ndarray, Colour]],
    alpha: float = 0.4,
    contour: bool = True,
) -> np.ndarray:
    """Grey image (see `to_display`) with each mask tinted in its colour -> HxWx3 uint8.

    Masks are blended in order, so overlapping masks mix their colours. With `contour`,
    each mask's 1-pixel boundary is then drawn in its full colour, after all the fills so
    that no outline is tinted by a later mask.
    """
    grey = to_display(image)
    checked = [(_as_mask(mask, grey.shape), colour) for mask, colour in masks]
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for mask, colour in checked:
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    out = np.round(rgb).astype(np.uint8)
    if contour:
        _draw_outlines(out, checked)
    return out


def label_overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    colours: Sequence[Colour] = CLASS_COLOURS,
    alpha: float = 0.4,
    contour: bool = True,
) -> np.ndarray:
    """Overlay every nonzero class of an integer label map; class c in colours[c - 1]."""
    return overlay(image, _class_masks(label_map, colours), alpha=alpha, contour=contour)


def prediction_vs_truth(
    image: np.ndarray, pred_mask: np.ndarray, truth_mask: np.ndarray | None = None
) -> np.ndarray:
    """Binary overlay in the project's convention: prediction in red, truth in blue."""
    masks = [(pred_mask, RED)] + ([(truth_mask, BLUE)] if truth_mask is not None else [])
    return overlay(image, masks)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Atomically write a uint8 grey (HxW) or RGB (HxWx3) array as a PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def collage_order(rows: Sequence[Mapping], max_rows: int | None = None) -> list[int]:
    """Indices of `rows` in collage order: by "score" ascending (worst first), then truncated.

    Rows without a score (or with a NaN score) keep their relative order after the scored ones.
    """

    def key(i: int) -> tuple[bool, float]:
        score = rows[i].get("score")
        missing = score is None or math.isnan(float(score))
        return missing, 0.0 if missing else float(score)

    order = sorted(range(len(rows)), key=key)  # stable, so ties keep the input order
    return order if max_rows is None else order[:max_rows]


def _as_2d(array: np.ndarray, what: str, name: str) -> np.ndarray:
    # Squeezing accepts MONAI's channel-first (1, H, W) arrays as well as plain (H, W).
    array = np.squeeze(np.asarray(array))
    if array.ndim != 2:
        raise ValueError(f"{name}: {what} must be 2D, got shape {array.shape}")
    return array


def _resize(array: np.ndarray, size: tuple[int, int], labels: bool) -> np.ndarray:
    """Resize to (height, width); nearest for labels, antialiased bilinear for intensities."""
    height, width = size
    if labels:
        img = Image.fromarray(array.astype(np.int32))  # PIL mode "I"
        return np.asarray(img.resize((width, height), Image.Resampling.NEAREST))
    img = Image.fromarray(np.nan_to_num(array.astype(np.float32)))  # PIL mode "F"
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))


def _pad(rgb: np.ndarray, tile: int) -> np.ndarray:
    out = np.zeros((tile, tile, 3), np.uint8)
    top, left = (tile - rgb.shape[0]) // 2, (tile - rgb.shape[1]) // 2
    out[top : top + rgb.shape[0], left : left + rgb.shape[1]] = rgb
    return out


def _colourise(label_map: np.ndarray, colours: Sequence[Colour]) -> np.ndarray:
    rgb = np.zeros(label_map.shape + (3,), np.uint8)
    for mask, colour in _class_masks(label_map, colours):
        rgb[mask] = colour
    return rgb


def _row_tiles(row: Mapping, tile: int, multiclass: bool) -> list[np.ndarray]:
    name = str(row.get("name", ""))
    image = _as_2d(row["image"], "image", name)
    pred = _as_2d(row["pred"], "pred", name).astype(np.int64)
    truth = None if row.get("truth") is None else _as_2d(row["truth"], "truth", name).astype(np.int64)
    for what, mask in (("pred", pred), ("truth", truth)):
        if mask is not None and mask.shape != image.shape:
            raise ValueError(f"{name}: {what} shape {mask.shape} does not match image {image.shape}")

    # Resize before overlaying so that outlines stay 1 pixel wide in the collage.
    scale = tile / max(image.shape)
    size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    image = _resize(image, size, labels=False)
    pred = _resize(pred, size, labels=True)
    truth = None if truth is None else _resize(truth, size, labels=True)

    grey = to_display(image)
    if multiclass:
        mask_tile = _colourise(pred, CLASS_COLOURS)
        combined = label_overlay(image, pred, contour=False)
        if truth is not None:
            _draw_outlines(combined, _class_masks(truth, CLASS_COLOURS))
    else:
        mask_tile = np.where(pred[..., None] > 0, np.uint8(255), np.uint8(0)).repeat(3, axis=2)
        combined = prediction_vs_truth(image, pred > 0, None if truth is None else truth > 0)
    return [_pad(t, tile) for t in (np.repeat(grey[..., None], 3, axis=2), mask_tile, combined)]


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: float) -> str:
    # Long case names are shortened with an ellipsis rather than running into the next tile.
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def save_collage(
    rows: Sequence[Mapping],
    path: str | os.PathLike,
    tile: int = 256,
    max_rows: int | None = None,
) -> Path:
    """Write a review collage: one row per case, worst score first.

    Each row maps "name", "image" (2D), "pred" (2D mask or label map), "truth" (same, or
    None) and optionally "score" (e.g. Dice). Columns: image | predicted mask | overlay.
    For binary masks the overlay shows the prediction in red and the truth in blue. If any
    pred/truth has more than one foreground class (max > 1) the whole collage switches to
    label-map mode: column 2 is the colour-coded label map (class c in CLASS_COLOURS[c-1])
    and column 3 fills the predicted classes translucently and outlines the true classes
    in the same colours. Tiles are `tile` px on their longest side, padded to square.
    """
    if not rows:
        raise ValueError("save_collage needs at least one row")
    selected = [rows[i] for i in collage_order(rows, max_rows)]
    multiclass = any(
        np.max(np.asarray(row[key])) > 1
        for row in selected
        for key in ("pred", "truth")
        if row.get(key) is not None
    )
    titles = (
        ["image", "prediction (classes)", "prediction (fill) vs truth (outline)"]
        if multiclass
        else ["image", "prediction", "prediction (red) vs truth (blue)"]
    )

    # Pillow's bundled default font is a scalable FreeType font in current releases.
    font = ImageFont.load_default(size=max(11, tile // 18))
    header = font.size * 2
    width = 3 * tile + 4 * _GAP
    height = header + len(selected) * (tile + _GAP) + _GAP
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for col, title in enumerate(titles):
        centre = _GAP + col * (tile + _GAP) + tile // 2
        text = _fit_text(draw, title, font, tile)
        draw.text((centre, header // 2), text, fill=_TEXT, font=font, anchor="mm")

    for r, row in enumerate(selected):
        top = header + r * (tile + _GAP)
        score = "" if row.get("score") is None else f"  Dice {float(row['score']):.3f}"
        tiles = [Image.fromarray(t) for t in _row_tiles(row, tile, multiclass)]
        tiles[0] = _annotate(tiles[0], str(row.get("name", "")), score, font)
        for col, tile_image in enumerate(tiles):
            canvas.paste(tile_image, (_GAP + col * (tile + _GAP), top))
    return save_png(path, np.asarray(canvas))


def _annotate(tile: Image.Image, name: str, suffix: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """Write name + suffix in the top-left corner of a tile on a translucent dark band.

    A long name is shortened so that the suffix (the score) always stays visible.
    """
    pad = 3
    layer = Image.new("RGBA", tile.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    room = tile.width - 2 * pad - draw.textlength(suffix, font=font)
    text = _fit_text(draw, name, font, room) + suffix
    _, _, right, bottom = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0, 170))
    draw.text((pad, pad), text, fill=_TEXT + (255,), font=font)
    return Image.alpha_composite(tile.convert("RGBA"), layer).convert("RGB")


def _read_scalars(log_dir: Path, tags: Sequence[str]) -> tuple[dict[str, dict[int, float]], set[str]]:
    """Scalar series {tag: {step: value}} from every event file under `log_dir`.

    A resumed run writes the same steps into a new file; for a repeated step the event with
    the later wall time wins. Also returns every scalar tag seen, for error messages.
    """
    # Imported here: it pulls in TensorBoard's TF shim, which only the curves need.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(p for p in log_dir.rglob("events.out.tfevents.*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {log_dir}")
    latest: dict[str, dict[int, tuple[float, float]]] = {tag: {} for tag in tags}
    seen: set[str] = set()
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        found = acc.Tags()["scalars"]
        seen.update(found)
        for tag in tags:
            if tag not in found:
                continue
            for event in acc.Scalars(tag):
                previous = latest[tag].get(event.step)
                if previous is None or event.wall_time >= previous[0]:
                    latest[tag][event.step] = (event.wall_time, event.value)
    series = {tag: {step: value for step, (_, value) in sorted(s.items())} for tag, s in latest.items()}
    return series, seen


def plot_training_curves(
    log_dir: str | os.PathLike,
    path: str | os.PathLike,
    loss_tag: str = "train_loss",
    metric_tag: str = "val_mean_dice",
) -> dict[str, list[tuple[int, float]]]:
    """Plot training loss and validation Dice per epoch, side by side, from TensorBoard logs.

    The best (highest) metric value is marked. A tag missing from the logs leaves its panel
    with a note; if both are missing this raises ValueError listing the tags that exist.
    Returns {"loss": [(step, value), ...], "metric": [...]}.
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log directory {log_dir} does not exist")
    series, seen = _read_scalars(log_dir, [loss_tag, metric_tag])
    if not series[loss_tag] and not series[metric_tag]:
        raise ValueError(
            f"neither {loss_tag!r} nor {metric_tag!r} found in {log_dir}; "
            f"scalar tags present: {sorted(seen) or 'none'}"
        )
    result = {
        "loss": [(int(s), float(v)) for s, v in series[loss_tag].items()],
        "metric": [(int(s), float(v)) for s, v in series[metric_tag].items()],
    }

    fig = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for ax, points, title, colour in (
        (loss_ax, result["loss"], f"Training loss ({loss_tag})", "tab:blue"),
        (metric_ax, result["metric"], f"Validation Dice ({metric_tag})", "tab:green"),
    ):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if not points:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, color=colour, marker="o" if len(points) <= 30 else None, markersize=3)
    if result["metric"]:
        best_step, best = max(result["metric"], key=lambda p: p[1])
        metric_ax.plot([best_step], [best], marker="*", markersize=14, color="tab:red", zorder=3)
        metric_ax.annotate(
            f"best {best:.4f} @ epoch {best_step}",
            xy=(best_step, best),
            xytext=(0.98, 0.04),
            textcoords="axes fraction",
            ha="right",
            va="bottom",
            arrowprops={"arrowstyle": "->", "color": "tab:red"},
            bbox={"boxstyle": "round", "fc": "white", "ec": "tab:red"},
        )
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return result
