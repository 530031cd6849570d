"""A terminal progress bar (tqdm on stderr) fed by :class:`MedAICommonLib.progress.Progress`."""

from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def progress_printer():
    """Yield a ``(stage, fraction)`` callback that draws a progress bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=1000, file=sys.stderr, leave=False, disable=not sys.stderr.isatty(),
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")

    def callback(stage: str, fraction: float) -> None:
        bar.set_description_str(stage)
        bar.n = int(fraction * 1000)
        bar.refresh()

    try:
        yield callback
    finally:
        bar.close()
