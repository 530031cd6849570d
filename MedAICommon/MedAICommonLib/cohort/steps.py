"""What a worker does for one case: run each step in-process, write it atomically, mark it done last.

A case-step's output folder is ``<output>/<case>/<step>/``. The command writes into a temporary folder
beside it; when the command succeeded, its report is moved to the final paths, ``done.json`` (with the
step's key) is written into the temporary folder, atomically, and the folder is renamed into place. A
folder with a ``done.json`` of the current key is finished and is skipped; anything else (a killed
worker's leftovers, an older key) is redone. Every rename into place is appended to
``<output>/.medai-batch/done.log``, so a test can count that no case-step was written twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..report import write_json_atomic
from .digests import step_key, value_digest
from .manifest import Case
from .model_cache import model_cache_enabled
from .pipeline import Step, substitute

DONE = "done.json"
LOG_FOLDER = ".medai-batch"
_command_lock = threading.Lock()  # one command at a time per process: they share the process's scene
_prepared = {"done": False}


@dataclass
class StepResult:
    """What happened to one case-step: ``status`` run | skipped | failed | not run; ``command`` the step's
    ``medai`` command (the cohort table and report read each step's metrics by it)."""

    status: str
    key: str = ""
    seconds: float = 0.0
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    command: str = ""


def done_key(folder: Path) -> str | None:
    """The key in ``folder/done.json``, or None when the step is not finished there."""
    try:
        return json.loads((folder / DONE).read_text()).get("key")
    except (OSError, ValueError):
        return None


def _read_metrics(folder: Path) -> dict:
    try:
        return json.loads((folder / "report.json").read_text()).get("metrics", {}) or {}
    except (OSError, ValueError):
        return {}


def _prepare_worker() -> None:
    """Once per process: a GPU per worker (by the worker's index) and a share of the cores for its threads."""
    if _prepared["done"]:
        return
    _prepared["done"] = True
    with contextlib.suppress(Exception):  # outside a Dask worker (tests, a plain call) nothing is set
        from distributed import get_worker

        worker = get_worker()
        threads = int(os.environ.get("MEDAI_WORKER_THREADS", "0"))
        import torch

        if threads > 0:
            import SimpleITK as sitk

            torch.set_num_threads(threads)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        if torch.cuda.is_available():
            index = int(worker.name) if str(worker.name).isdigit() else 0
            torch.cuda.set_device(index % torch.cuda.device_count())


@contextlib.contextmanager
def _output_into(stream):
    """Python's and native (VTK, ITK) stdout and stderr into ``stream`` (a file) within the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _run_in_process(argv: list[str], log: Path, use_cache: bool) -> int:
    """``medai ARGV`` in this process (no interpreter start-up), its output in ``log``; the exit code."""
    from ..cli.main import build_parser, run_command
    from ..runtime import get_runtime

    with _command_lock, log.open("w") as stream, _output_into(stream), model_cache_enabled(use_cache):
        try:
            try:
                args = build_parser(argv[0]).parse_args(argv)
            except SystemExit as error:
                return int(error.code or 2)
            return run_command(args)
        finally:
            get_runtime().clear()


def _error_of(folder: Path, code: int) -> str:
    try:
        error = json.loads((folder / "report.json").read_text()).get("error")
    except (OSError, ValueError):
        error = None
    if not error:
        lines = (
            [line for line in (folder / "log.txt").read_text().splitlines() if line.strip()]
            if (folder / "log.txt").exists()
            else []
        )
        error = lines[-1] if lines else f"exit code {code}"
    return str(error)


def _publish(tmp: Path, final: Path, key: str, log_file: Path, record: dict) -> bool:
    """Rename ``tmp`` into ``final`` (done.json written last); False when another attempt finished first."""
    report = tmp / "report.json"
    if report.exists():
        report.write_text(report.read_text().replace(str(tmp), str(final)))
    write_json_atomic(tmp / DONE, record)
    if final.exists():
        if done_key(final) == key:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex[:8]}")
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:  # another attempt renamed its folder into place first
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    line = json.dumps(
        {"case": record["case"], "step": record["step"], "key": key, "pid": os.getpid(), "time": time.time()}
    )
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return True


def run_step(case: Case, step: Step, key: str, folders: dict[str, str], output: Path) -> StepResult:
    """Run one case-step into ``output/<case>/<step>`` unless it is done with ``key``."""
    final = output / case.id / step.name
    if done_key(final) == key:
        return StepResult("skipped", key, metrics=_read_metrics(final))
    tmp = final.with_name(f".{step.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    values = {f"case.{name}": value for name, value in case.values.items()}
    values.update(folders)
    values["out"] = str(tmp)
    argv = [step.command, *(substitute(arg, values) for arg in step.args), "--report", str(tmp / "report.json")]
    start = time.perf_counter()
    code = _run_in_process(argv, tmp / "log.txt", "model" in step.needs)
    seconds = round(time.perf_counter() - start, 3)
    if code != 0:
        error = _error_of(tmp, code)
        failed = final.with_name(f".{step.name}.failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.rename(tmp, failed)
        return StepResult("failed", key, seconds, error=f"{step.name}: {error}")
    log_file = output / LOG_FOLDER / "done.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "case": case.id,
        "step": step.name,
        "key": key,
        "command": step.command,
        "args": argv[1:-2],
        "seconds": seconds,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _publish(tmp, final, key, log_file, record)
    return StepResult("run", key, seconds, metrics=_read_metrics(final))


def run_case(case: Case, steps: list[Step], output: str) -> dict:
    """Run (or skip) every step of ``case``; stops at the first failed step. Never raises for a step's error.

    Returns ``{"id", "status" (done|failed), "error", "steps": {name: StepResult as a dict}}``.
    """
    _prepare_worker()
    output = Path(output)
    keys: dict[str, str] = {}
    folders: dict[str, str] = {}
    results: dict[str, dict] = {}
    error = None
    for step in steps:
        if error is not None:
            results[step.name] = StepResult("not run", command=step.command).__dict__
            continue
        try:
            digests = {column: value_digest(case.values[column]) for column in step.columns}
            key = step_key(step.command, step.args, digests, {name: keys[name] for name in step.uses})
            result = run_step(case, step, key, folders, output)
        except Exception as exc:  # noqa: BLE001 - a case's failure is recorded; the cohort goes on
            result = StepResult("failed", error=f"{step.name}: {type(exc).__name__}: {exc}")
        result.command = step.command
        keys[step.name] = result.key
        folders[step.name] = str(output / case.id / step.name)
        results[step.name] = result.__dict__
        error = result.error if result.status == "failed" else None
    return {"id": case.id, "status": "failed" if error else "done", "error": error, "steps": results}
