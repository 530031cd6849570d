"""Run the cases on Dask distributed: an embedded ``LocalCluster``, or a running cluster by its address.

One Dask task per case (:func:`.steps.run_case`); its steps run one after the other in the worker
process, each ``medai`` command in-process. Dask reschedules the task of a worker that dies; the
step outputs already renamed into place are skipped there, and a half-written one never counts.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager

from .manifest import Case
from .pipeline import Step
from .steps import run_case


def default_workers() -> tuple[int, int]:
    """(workers, threads each for torch/ITK): one worker per CUDA GPU, else cores / 4 (1 to 8)."""
    cores = os.cpu_count() or 1
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch: CPU split
        gpus = 0
    workers = gpus if gpus else max(1, min(8, cores // 4))
    return workers, max(1, cores // workers)


@contextmanager
def _workers_ignore_ctrl_c():
    """Worker processes started in the block ignore SIGINT (they inherit it): Ctrl-C in a terminal reaches
    the whole process group, and only ``medai batch`` itself should stop, closing the cluster cleanly."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None):
    """A ``distributed.Client``: to ``scheduler`` when given, else to a new ``LocalCluster`` of worker
    processes (``workers`` or :func:`default_workers`, one thread each), closed afterwards."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as error:
            raise ValueError(
                f"Cannot reach the Dask scheduler at {scheduler} ({error}); start it first "
                "(dask scheduler, dask-jobqueue, dask-kubernetes) or leave --scheduler out."
            ) from error
        try:
            yield client
        finally:
            client.close()
        return
    count, threads = default_workers()
    if workers is not None:
        if workers < 1:
            raise ValueError(f"--workers must be 1 or more, got {workers}.")
        count, threads = workers, max(1, (os.cpu_count() or 1) // workers)
    os.environ["MEDAI_WORKER_THREADS"] = str(threads)  # read by each worker process it spawns
    with _workers_ignore_ctrl_c():
        cluster = LocalCluster(
            n_workers=count, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class ProgressLine:
    """Cases done, failed and remaining with an ETA, on one terminal line (a line per update when piped)."""

    def __init__(self, total: int, dashboard: str | None, stream=None) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        if dashboard:
            print(f"medai batch: Dask dashboard at {dashboard}", file=self.stream, flush=True)

    def update(self, status: str) -> None:
        """Count one finished case (``status`` done|failed) and redraw."""
        self.done += status == "done"
        self.failed += status != "done"
        finished = self.done + self.failed
        remaining = self.total - finished
        elapsed = time.perf_counter() - self.start
        eta = _duration(elapsed / finished * remaining) if finished else "?"
        text = (
            f"medai batch: {self.done} done, {self.failed} failed, {remaining} remaining of {self.total}"
            f" (elapsed {_duration(elapsed)}, ETA {eta})"
        )
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        print(("\r" + text) if tty else text, end="" if tty and remaining else "\n", file=self.stream, flush=True)


def run_cases(
    client, cases: list[Case], steps: list[Step], output: str, on_result: Callable[[dict], None] | None = None
) -> list[dict]:
    """Submit one task per case to ``client`` and gather the results in manifest order.

    A task that Dask itself gives up on (e.g. its worker was killed more often than Dask allows) is a
    failed case with Dask's error. ``KeyboardInterrupt`` cancels what has not finished, then propagates.
    """
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]  # keys of this run only: a scheduler may still hold an earlier run's results
    futures = {
        client.submit(run_case, case, steps, output, key=f"medai-case-{case.id}-{run}"): case.id for case in cases
    }
    results: dict[str, dict] = {}
    try:
        for future in as_completed(futures):
            case_id = futures[future]
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - recorded as the case's failure
                result = {"id": case_id, "status": "failed", "error": f"{type(error).__name__}: {error}", "steps": {}}
            results[case_id] = result
            if on_result is not None:
                on_result(result)
    except KeyboardInterrupt:
        client.cancel(list(futures))
        raise
    return [results[case.id] for case in cases if case.id in results]
