"""Run heavy work in a separate process, as Slicer's established AI extensions do.

A crash, an out-of-memory kill or a Cancel in the worker cannot take the user's scene with it:
the worker is ``python -m MedAICommonLib.cli COMMAND ... --progress-json``, exchanging files
with the caller; progress arrives as JSON lines on its stdout, read by a thread into a queue
that the caller drains (a Qt timer in Slicer, a loop in batches). Cancel kills the worker's
whole process tree (its process group on POSIX, ``taskkill /T`` on Windows). The caller loads outputs
into the scene only when the worker succeeded.

Inside Slicer the worker is ``PythonSlicer``, which knows neither the extension's module folders
(Slicer adds them to ``sys.path`` at run time) nor any editable install: the child's ``PYTHONPATH``
names the folders holding MedAI's packages explicitly, found from the packages this process imported,
so the installed layout (one ``qt-scripted-modules`` folder) and "Additional module paths" (one
folder per module) both work.
"""

from __future__ import annotations

import importlib.util
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

from ..progress import CancelledError

PACKAGES = ("MedAICommonLib", "MedAISegLib", "MedAIRegisterLib", "MedAIPlanLib")
"""MedAI's packages a worker imports; each lives in its module's folder."""

_WINDOWS = os.name == "nt"
# Windows process-creation flags (subprocess defines them only on Windows): a new process group, no console.
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)


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
    from ..runtime import in_slicer_application

    if in_slicer_application():
        found = shutil.which("PythonSlicer")
        if found:
            return found
        import slicer

        candidate = os.path.join(slicer.app.slicerHome, "bin", "PythonSlicer" + (".exe" if _WINDOWS else ""))
        if os.path.isfile(candidate):
            return candidate
    return sys.executable


def package_folders() -> list[str]:
    """The folders holding MedAI's packages as this process imports them (one per module, or one shared)."""
    folders = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = os.path.dirname(os.path.abspath(next(iter(spec.submodule_search_locations))))
        if folder not in folders:
            folders.append(folder)
    return folders


def worker_environment(extra: dict | None = None, base: dict | None = None) -> dict:
    """The child's environment: ``base`` (default ``os.environ``) with ``extra``, unbuffered output, and
    ``PYTHONPATH`` = MedAI's package folders, then the ``PYTHONPATH`` of ``extra`` or ``base``."""
    env = dict(os.environ if base is None else base)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    entries = package_folders()
    entries += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in entries]
    env["PYTHONPATH"] = os.pathsep.join(entries)
    return env


def popen_options(windows: bool = _WINDOWS) -> dict:
    """How the worker is started so that Cancel can end it with its children, without a console window."""
    if windows:
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def kill_tree_command(pid: int) -> list[str]:
    """The Windows command that ends process ``pid`` and all its descendants."""
    return ["taskkill", "/T", "/F", "/PID", str(pid)]


def error_line(stderr: list[str], any_line: bool = True) -> str:
    """The worker's one-line error: its last ``medai ...`` line, else (with ``any_line``) its last
    non-empty line, e.g. the last line of a Python traceback."""
    for line in reversed(stderr):
        if line.startswith("medai"):
            return line
    if not any_line:
        return ""
    return next((line.strip() for line in reversed(stderr) if line.strip()), "")


class Worker:
    """One ``medai`` command in a child process with progress, cancel and isolation.

    ``env`` adds to the child's environment (its ``PYTHONPATH`` goes after MedAI's package folders);
    ``python`` replaces the interpreter command (default: PythonSlicer in Slicer, else this Python).
    """

    def __init__(self, args: list[str], on_progress=None, env: dict | None = None, python: list[str] | None = None):
        self.args = list(args)
        self.on_progress = on_progress
        self.env = env
        self.python = list(python) if python else None
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
        command = [*(self.python or [python_executable()]), "-m", "MedAICommonLib.cli", *self.args, "--progress-json"]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_environment(self.env),
            **popen_options(),
        )
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
            if kind == "out" and line.startswith('{"progress"'):
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
        """Stop the worker and its children: on POSIX SIGTERM to the group, SIGKILL after ``grace_s``;
        on Windows ``taskkill /T /F`` on the tree."""
        if self._process is None or self._process.poll() is not None:
            return
        if _WINDOWS:
            subprocess.run(
                kill_tree_command(self._process.pid), capture_output=True, check=False, creationflags=CREATE_NO_WINDOW
            )
            try:
                self._process.wait(timeout=max(grace_s, 5.0))
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        else:
            self._kill_group(grace_s)
        self.state = WorkerState.CANCELLED

    def _kill_group(self, grace_s: float) -> None:
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        except ProcessLookupError:
            pass

    def result(self) -> WorkerResult:
        """The outcome so far (call after the worker ended)."""
        error = error_line(self._stderr, any_line=self.state == WorkerState.FAILED)
        if not error and self.state == WorkerState.FAILED:
            code = self._process.returncode
            error = (
                f"the worker was killed by signal {-code}"
                if code is not None and code < 0
                else f"the worker exited with code {code}"
            )
        return WorkerResult(self.state, self._process.returncode if self._process else None, error, self._stderr[-50:])

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
