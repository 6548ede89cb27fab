"""A progress bar that does not flood logs: ignite's ProgressBar on a terminal, a few lines otherwise.

ignite's ProgressBar (tqdm) redraws its line with carriage returns many times a
second; written to a file or a CI log that is a wall of text. Configs use

    - _target_: xray_seg.shared.progress.ProgressBar
      persist: false          # as ignite's
      every_percent: 25       # without a terminal: one log line per 25% of an epoch

which is ignite's bar when stderr is a terminal, and otherwise logs
``Epoch [2/40]: 50% (10/20 iterations)`` through the ``xray_seg.progress`` logger at
every ``every_percent`` of each epoch (epoch summaries come from StatsHandler).
MONAI's CacheDataset draws a tqdm bar of its own while caching: give it
``progress: $xray_seg.shared.progress.on_terminal()``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar

logger = logging.getLogger("xray_seg.progress")


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm draws) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """``attach(engine)`` like ignite's ProgressBar; terminal or not decides how progress is shown."""

    def __init__(self, persist: bool = False, every_percent: int = 25, stream: TextIO | None = None, **tqdm_kwargs: Any):
        if not 0 < every_percent <= 100:
            raise ValueError(f"every_percent must be in 1..100, got {every_percent}")
        self.persist = persist
        self.every_percent = every_percent
        self.stream = stream if stream is not None else sys.stderr
        self.tqdm_kwargs = tqdm_kwargs

    def attach(self, engine: Engine, metric_names: Any = None, output_transform: Any = None) -> None:
        if on_terminal(self.stream):
            bar = IgniteProgressBar(persist=self.persist, file=self.stream, **self.tqdm_kwargs)
            bar.attach(engine, metric_names=metric_names, output_transform=output_transform)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.log_milestone)

    def log_milestone(self, engine: Engine) -> None:
        """One line each time the epoch passes a multiple of ``every_percent``."""
        total = engine.state.epoch_length
        if not total:
            return
        done = (engine.state.iteration - 1) % total + 1
        step = self.every_percent
        if (done * 100 // total) // step > ((done - 1) * 100 // total) // step:
            epochs = f"Epoch [{engine.state.epoch}/{engine.state.max_epochs}]" if engine.state.max_epochs > 1 else "Progress"
            logger.info(f"{epochs}: {done * 100 // total}% ({done}/{total} iterations)")
