"""The embedded synthetic dataset: file layout, formats, mask validity and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from xray_seg.cli.main import main as cli
from xray_seg.synthetic.cxr import generate_dataset, synthesize_case

SIZE = 96


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _mediastinum(mask: np.ndarray) -> np.ndarray:
    """Pixels between the two lungs on the rows where both are present."""
    labels, n = ndimage.label(mask)
    assert n == 2
    # Order the components left to right so that "between" is well defined.
    order = np.argsort([np.nonzero(labels == k)[1].mean() for k in (1, 2)]) + 1
    cols = np.arange(mask.shape[1])[None]
    left = np.where(labels == order[0], cols, -1).max(1)
    right = np.where(labels == order[1], cols, mask.shape[1]).min(1)
    rows = (left >= 0) & (right < mask.shape[1])
    return rows[:, None] & (cols > left[:, None]) & (cols < right[:, None])


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_files_layout_and_formats(tmp_path: Path, bit_depth: int) -> None:
    names = generate_dataset(tmp_path, n_cases=3, size=SIZE, seed=0, bit_depth=bit_depth)
    assert names == ["synth_0000", "synth_0001", "synth_0002"]
    for sub in ("images", "masks"):
        files = sorted(p.name for p in (tmp_path / sub).iterdir())
        assert files == [f"{n}.png" for n in names]  # also: no '.partial' leftovers
    for name in names:
        with Image.open(tmp_path / "images" / f"{name}.png") as im:
            assert im.mode == ("L" if bit_depth == 8 else "I;16")
        image = _read(tmp_path / "images" / f"{name}.png")
        mask = _read(tmp_path / "masks" / f"{name}.png")
        assert image.shape == mask.shape == (SIZE, SIZE)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        if bit_depth == 8:
            assert image.dtype == np.uint8
        else:
            assert image.dtype == np.uint16
            assert image.max() > 255 and 400 <= image.min() and image.max() <= 4100


def test_masks_have_two_lungs_darker_than_mediastinum() -> None:
    rng = np.random.default_rng(7)
    for _ in range(8):
        image, mask = synthesize_case(rng, SIZE)
        assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
        assert mask.dtype == bool and 0.1 < mask.mean() < 0.45
        mediastinum = _mediastinum(mask)
        assert mediastinum.sum() > 0
        assert image[mask].mean() + 0.1 < image[mediastinum].mean()


def test_deterministic_per_seed(tmp_path: Path) -> None:
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_dataset(tmp_path / run, n_cases=2, size=SIZE, seed=seed)
    for sub in ("images", "masks"):
        for name in ("synth_0000", "synth_0001"):
            a, b, c = (_read(tmp_path / run / sub / f"{name}.png") for run in "abc")
            assert np.array_equal(a, b)
            assert not np.array_equal(a, c)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["synthetic", "cxr", "--output_dir", str(tmp_path), "--n_cases", "2", "--size", "64", "--bit_depth", "16"]) == 0
    assert "wrote 2 synthetic cases" in capsys.readouterr().out
    assert len(list((tmp_path / "masks").glob("*.png"))) == 2
    assert not list(tmp_path.rglob("*.partial*"))
