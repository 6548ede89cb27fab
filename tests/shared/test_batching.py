"""2D inference batches: which inputs may share a batch, and the error text from a worker."""

from __future__ import annotations

import pytest

from xray_seg.shared.batching import reader_batches
from xray_seg.shared.errors import input_error_in


def _items(*names: str) -> list[dict]:
    return [{"image": f"/in/{name}"} for name in names]


def test_pil_files_are_batched_and_other_readers_go_alone() -> None:
    items = _items("a.png", "b.jpg", "c.dcm", "d.tif", "e.PNG", "f.nii.gz", "g.tiff", "h.png")
    batches = reader_batches(items, 3)
    assert batches == [[2], [0, 1, 3], [5], [4, 6, 7]]
    assert sorted(i for b in batches for i in b) == list(range(len(items)))  # each exactly once


@pytest.mark.parametrize("size", [1, 2, 4, 100])
def test_batches_are_at_most_batch_size(size: int) -> None:
    items = _items(*(f"{i}.png" for i in range(10)))
    batches = reader_batches(items, size)
    assert all(len(b) <= size for b in batches) and [i for b in batches for i in b] == list(range(10))


def test_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        reader_batches(_items("a.png"), 0)


def test_input_error_found_in_process_and_in_a_worker_traceback() -> None:
    class ImageReadError(ValueError):
        pass

    try:
        try:
            raise OSError("broken data stream")
        except OSError:
            raise ImageReadError("/in/x.png: cannot read image: OSError: broken data stream")
    except ImageReadError as err:
        assert input_error_in(err) == "/in/x.png: cannot read image: OSError: broken data stream"
    # PyTorch re-raises a worker's error with the worker's formatted traceback as the message.
    worker = ImageReadError(
        "Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "inputs.py", line 1, in _transform\n    raise ImageReadError(f"{path}: cannot read image")\n'
        "xray_seg.shared.image_checks.ImageReadError: /in/y.png: cannot read image: OSError: truncated\n")
    assert input_error_in(RuntimeError("wrapped")) is None
    assert input_error_in(worker) == "/in/y.png: cannot read image: OSError: truncated"


def test_input_workers_run_at_a_lower_priority_than_the_network() -> None:
    """The decoding workers yield the cores to the network's threads (InputLoader's docstring)."""
    import os

    from monai.data import Dataset

    from xray_seg.shared.inputs import WORKER_NICENESS, InputLoader

    loader = InputLoader(Dataset([0, 1, 2], transform=lambda _: os.nice(0)), batch_size=1, num_workers=1)
    niceness = [int(batch[0]) for batch in loader]
    assert niceness == [min(19, os.nice(0) + WORKER_NICENESS)] * 3
    # In the main process (num_workers=0) nothing changes: os.nice(0) reads without changing.
    inline = InputLoader(Dataset([0], transform=lambda _: os.nice(0)), batch_size=1, num_workers=0)
    assert [int(batch[0]) for batch in inline] == [os.nice(0)]
