"""A terminal progress bar (tqdm on stderr) fed by :class:`MedAICommonLib.progress.Progress`.

In a worker (``--progress-json``) the same callback prints one JSON line per step on stdout instead,
which :class:`MedAICommonLib.jobs.worker.Worker` reads, so every command reports to the panel unchanged.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

_JSON_MODE = False


def set_json_mode(enabled: bool) -> None:
    """Make :func:`progress_printer` emit JSON progress lines (the worker protocol) instead of a bar."""
    global _JSON_MODE
    _JSON_MODE = bool(enabled)


def json_progress(stage: str, fraction: float) -> None:
    """Progress as one JSON line on stdout, read by :class:`MedAICommonLib.jobs.worker.Worker`."""
    print(json.dumps({"progress": {"stage": stage, "fraction": round(float(fraction), 4)}}), flush=True)


@contextmanager
def progress_printer():
    """Yield a ``(stage, fraction)`` callback that draws a progress bar on stderr (JSON lines in a worker)."""
    if _JSON_MODE:
        yield json_progress
        return
    from tqdm import tqdm

    bar = tqdm(
        total=1000,
        file=sys.stderr,
        leave=False,
        disable=not sys.stderr.isatty(),
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
    )

    def callback(stage: str, fraction: float) -> None:
        bar.set_description_str(stage)
        bar.n = int(fraction * 1000)
        bar.refresh()

    try:
        yield callback
    finally:
        bar.close()
