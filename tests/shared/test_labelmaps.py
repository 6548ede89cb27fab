"""first_argmax: the labels of np.argmax (ties and NaN included), by comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from xray_seg.shared.labelmaps import first_argmax


@pytest.mark.parametrize("shape", [(2, 33, 17), (3, 5, 6, 7), (6, 16, 16), (12, 9, 9)])
def test_first_argmax_equals_numpy_on_every_axis_ties_included(shape) -> None:
    rng = np.random.default_rng(len(shape))
    x = rng.integers(0, 3, size=shape).astype(np.float32)  # few values: many ties
    for axis in range(len(shape)):
        np.testing.assert_array_equal(first_argmax(x, axis), np.argmax(x, axis))


def test_first_argmax_on_probabilities_and_integers() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((4, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(first_argmax(probs), np.argmax(probs, 0))
    ints = rng.integers(-5, 5, size=(3, 10, 10))
    np.testing.assert_array_equal(first_argmax(ints), np.argmax(ints, 0))


def test_first_argmax_with_nan_answers_as_numpy() -> None:
    x = np.zeros((2, 4, 4), np.float32)
    x[1, 0, 0] = 1.0
    x[0, 2, 2] = np.nan  # np.argmax: the first NaN wins
    x[1, 3, 3] = np.nan
    np.testing.assert_array_equal(first_argmax(x), np.argmax(x, 0))
    assert first_argmax(x)[2, 2] == 0 and first_argmax(x)[3, 3] == 1 and first_argmax(x)[0, 0] == 1
