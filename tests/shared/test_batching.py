"""2D inference batches: which inputs may share a batch, and the error text from a worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_runs import run_bundle_in_process

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


def _engine_with_batch(n: int):
    """An ignite engine whose state holds a decollated batch of n items, as at MODEL_COMPLETED."""
    import torch
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    engine.state.batch = [{"image": torch.full((1, 4, 4), float(i))} for i in range(n)]
    engine.state.output = [{"pred": torch.full((2, 4, 4), float(i))} for i in range(n)]
    return engine


def _slow_sum(d: dict) -> dict:
    """A transform whose time varies per item, so that threads finish out of order."""
    import threading
    import time

    time.sleep(0.02 * (4 - int(d["image"].max())))
    return {**d, "total": float(d["pred"].sum()), "thread": threading.current_thread().name}


def test_threaded_postprocessing_gives_each_item_its_own_result_in_order() -> None:
    from monai.engines.utils import engine_apply_transform

    from xray_seg.shared.handlers import ThreadedPostprocessing

    serial = _engine_with_batch(4)
    expected = [engine_apply_transform(b, o, _slow_sum)[1]["total"] for b, o in zip(serial.state.batch,
                                                                                       serial.state.output)]
    engine, handler = _engine_with_batch(4), ThreadedPostprocessing(_slow_sum, threads=4)
    handler.start(engine)
    handler(engine)
    handler.stop()
    assert [o["total"] for o in engine.state.output] == expected == [0.0, 32.0, 64.0, 96.0]
    assert [float(b["image"].max()) for b in engine.state.batch] == [0.0, 1.0, 2.0, 3.0]
    assert len({o["thread"] for o in engine.state.output}) > 1  # really in parallel threads
    assert handler.pool is None


def test_threaded_postprocessing_raises_the_transforms_error() -> None:
    from xray_seg.shared.handlers import ThreadedPostprocessing

    def broken(d: dict) -> dict:
        if int(d["image"].max()) == 2:
            raise ValueError("item 2 is broken")
        return d

    engine, handler = _engine_with_batch(4), ThreadedPostprocessing(broken, threads=2)
    handler.start(engine)
    with pytest.raises(RuntimeError) as info:  # MONAI's apply_transform wraps the error, as in one thread
        handler(engine)
    assert "item 2 is broken" in repr(info.value.__cause__) + str(info.value)
    handler.stop()


@pytest.mark.parametrize("bundle", ["cxr_lungs", "cxr_anatomy"])
def test_2d_inference_writes_the_same_files_in_one_thread_and_in_several(bundle: str, tmp_path: Path) -> None:
    """ThreadedPostprocessing (handlers#1 of inference.yaml) changes the speed, not one byte of the outputs."""
    from xray_seg.shared.paths import BUNDLES
    from xray_seg.synthetic.cxr import generate_dataset

    generate_dataset(tmp_path / "data", n_cases=6, size=320, seed=3)
    outputs = {}
    for threads in (1, 3):
        out = tmp_path / f"out_{threads}"
        run_bundle_in_process(BUNDLES / bundle, ["inference.yaml"], dataset_dir=tmp_path / "data" / "images",
                              output_dir=out, device="$torch.device('cpu')", batch_size=4,
                              **{"handlers#1#threads": threads})
        outputs[threads] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert len(outputs[1]) >= 7 and outputs[1] == outputs[3]  # masks of 6 inputs and qc.csv, byte for byte


def test_postprocessing_threads_are_shared_among_the_processes_of_a_machine(monkeypatch) -> None:
    import os

    from xray_seg.shared.handlers import default_threads

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == cpus
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus))  # more processes than CPUs: still one thread each
    assert default_threads() == 1
