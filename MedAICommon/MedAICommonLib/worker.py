"""Run heavy work in a separate process, as Slicer's established AI extensions do.

A crash, an out-of-memory kill or a Cancel in the worker cannot take the user's scene with it:
the worker is ``python -m MedAICommonLib.cli COMMAND ... --progress-json``, exchanging files
with the caller; progress arrives as JSON lines on its stdout, read by a thread into a queue
that the caller drains (a Qt timer in Slicer, a loop in batches). Cancel kills the worker's
whole process group. The caller loads outputs into the scene only when the worker succeeded.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from .progress import CancelledError


class WorkerState(Enum):
    """Life cycle of a worker."""

    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class WorkerResult:
    """How a worker ended: state, exit code, its one-line error (if any) and its stderr tail."""

    state: WorkerState
    returncode: int | None
    error: str = ""
    log: list[str] = field(default_factory=list)


def python_executable() -> str:
    """The Python to run the worker with: Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    from .runtime import in_slicer_application

    if in_slicer_application():
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


class Worker:
    """One ``medai`` command in a child process with progress, cancel and isolation."""

    def __init__(self, args: list[str], on_progress=None, env: dict | None = None):
        self.args = list(args)
        self.on_progress = on_progress
        self.env = env
        self.state = WorkerState.NOT_STARTED
        self.stage, self.fraction = "", 0.0
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._threads: list[threading.Thread] = []

    @property
    def pid(self) -> int | None:
        """Process id of the worker (None before start)."""
        return self._process.pid if self._process else None

    def start(self) -> Worker:
        """Start the worker process (in its own process group, so Cancel can end its children too)."""
        command = [python_executable(), "-m", "MedAICommonLib.cli", *self.args, "--progress-json"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env=env, start_new_session=True)
        self.state = WorkerState.RUNNING
        for stream, kind in ((self._process.stdout, "out"), (self._process.stderr, "err")):
            thread = threading.Thread(target=self._read, args=(stream, kind), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, stream, kind: str) -> None:
        for line in stream:
            self._queue.put((kind, line.rstrip("\n")))
        stream.close()

    def poll(self) -> WorkerState:
        """Drain pending output (calling ``on_progress``) and update the state; never blocks."""
        while True:
            try:
                kind, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "out" and line.startswith("{\"progress\""):
                message = json.loads(line)["progress"]
                self.stage, self.fraction = message["stage"], message["fraction"]
                if self.on_progress is not None:
                    self.on_progress(self.stage, self.fraction)
            elif kind == "err":
                self._stderr.append(line)
        if self.state == WorkerState.RUNNING and self._process.poll() is not None:
            for thread in self._threads:
                thread.join(timeout=5)
            self._drain_rest()
            self.state = WorkerState.SUCCEEDED if self._process.returncode == 0 else WorkerState.FAILED
        return self.state

    def _drain_rest(self) -> None:
        while not self._queue.empty():
            kind, line = self._queue.get_nowait()
            if kind == "err":
                self._stderr.append(line)

    def cancel(self, grace_s: float = 0.5) -> None:
        """Stop the worker and its children: SIGTERM to the group, SIGKILL after ``grace_s``."""
        if self._process is None or self._process.poll() is not None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        except ProcessLookupError:
            pass
        self.state = WorkerState.CANCELLED

    def result(self) -> WorkerResult:
        """The outcome so far (call after the worker ended)."""
        error = ""
        for line in reversed(self._stderr):
            if line.startswith("medai"):
                error = line
                break
        if not error and self.state == WorkerState.FAILED:
            code = self._process.returncode
            error = (f"the worker was killed by signal {-code}" if code is not None and code < 0
                     else f"the worker exited with code {code}")
        return WorkerResult(self.state, self._process.returncode if self._process else None, error,
                            self._stderr[-50:])

    def wait(self, timeout: float | None = None, cancel_flag=None, interval: float = 0.05) -> WorkerResult:
        """Block until the worker ends (for scripts), polling progress; ``cancel_flag()`` True cancels."""
        start = time.monotonic()
        while self.poll() == WorkerState.RUNNING:
            if cancel_flag is not None and cancel_flag():
                self.cancel()
                break
            if timeout is not None and time.monotonic() - start > timeout:
                self.cancel()
                break
            time.sleep(interval)
        return self.result()


def progress_reporter(progress):
    """A worker's ``on_progress`` callback feeding ``progress`` (a :class:`~MedAICommonLib.progress.Progress`)
    until it is cancelled; None without one."""
    if progress is None:
        return None

    def callback(stage, fraction):
        if not progress.cancelled:
            progress.update(stage, fraction)

    return callback


def run_worker(args: list[str], progress=None, timeout: float | None = None) -> WorkerResult:
    """Run ``medai ARGS`` in a worker, reporting into a :class:`~MedAICommonLib.progress.Progress`.

    Raises :class:`CancelledError` if the progress was cancelled, ``RuntimeError`` with the worker's
    one-line error if it failed.
    """
    worker = Worker(args, on_progress=progress_reporter(progress)).start()
    result = worker.wait(timeout=timeout, cancel_flag=(lambda: progress.cancelled) if progress else None)
    if result.state == WorkerState.CANCELLED:
        raise CancelledError("Cancelled; the worker was stopped and nothing was changed")
    if result.state != WorkerState.SUCCEEDED:
        raise RuntimeError(result.error or "the worker failed")
    return result
