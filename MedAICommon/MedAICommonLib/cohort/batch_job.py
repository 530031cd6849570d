"""The panel's Batch section: ``medai batch`` in a worker process, its cohort table read into a table node.

:class:`BatchJob` has the life cycle of :class:`~MedAICommonLib.jobs.scene_job.SceneJob` (``start``, ``poll``,
``cancel``, ``finish``, ``run``), so the panel runs it like any other heavy job: progress lines
(``"2 done, 1 failed of 3 cases"``), Cancel that kills the whole worker process group, and the worker's
own error in the dialog. The cases come from a manifest CSV or from a folder of cases
(:mod:`.case_folder`; the manifest built from it is written to ``OUTPUT/cases.csv``, so
``medai batch OUTPUT/cases.csv ...`` repeats the run in a terminal). Pipeline and manifest are checked
before the worker starts. When ``medai batch`` ends with exit code 0 (every case done) or 3 (some cases
failed), ``OUTPUT/cohort.csv`` becomes a table node named ``"<output folder> cohort"``: one row per case,
failed cases with their ``status`` and ``error``. Any other ending leaves the scene unchanged. Qt-free.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import bridge
from ..jobs.worker import Worker, WorkerResult, WorkerState, progress_reporter
from ..paths import require_path
from ..progress import CancelledError
from .case_folder import cases_from_folder, write_manifest
from .commands import EXIT_SOME_FAILED
from .manifest import read_manifest
from .pipeline import find_pipeline, load_pipeline
from .table import FIXED

BUILT_MANIFEST = "cases.csv"
"""The manifest written into the output folder when the cases come from a folder."""


def cohort_table_name(output) -> str:
    """The name of the table node of a cohort written to ``output``."""
    return f"{Path(output).name} cohort"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_cohort_columns(path) -> dict[str, list]:
    """``{column: values}`` of a cohort table CSV: ``id``, ``status`` and ``error`` as text, every column whose
    values are all numbers as floats (an empty cell, e.g. a failed case's metric, is NaN), others as text."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not header or not rows:
        raise RuntimeError(f"The cohort table {path} lists no case; the scene is unchanged.")
    columns: dict[str, list] = {}
    for name in header:
        texts = [row.get(name) or "" for row in rows]
        numbers = [_number(t) for t in texts if t.strip()]
        if name not in FIXED[:3] and None not in numbers:
            columns[name] = [_number(t) if t.strip() else math.nan for t in texts]
        else:
            columns[name] = texts
    return columns


def load_cohort_table(scene, path, name: str, node=None):
    """Read the cohort table CSV at ``path`` into a table node called ``name`` (or into ``node``)."""
    return bridge.create_table(scene, read_cohort_columns(path), name, node=node)


def _manifest(cases: Path, output: Path, folder: Path) -> Path:
    """The manifest to run: ``cases`` itself, or the one built from the case folder ``cases`` into ``folder``."""
    if cases.is_file():
        return cases
    if cases.resolve() == output.resolve():
        raise ValueError(f"The output folder {output} is the case folder; choose another folder for the results.")
    columns, rows = cases_from_folder(cases, exclude=[output])
    return write_manifest(folder / BUILT_MANIFEST, columns, rows)


class BatchJob:
    """``medai batch`` over the cases at ``cases`` (manifest CSV or case folder) with ``pipeline`` (a shipped
    pipeline's name or a YAML file) into the folder ``output``, in a worker process.

    ``workers`` is the number of Dask worker processes (None: ``medai batch``'s default). ``table_node`` is the
    table of an earlier run; it is updated when it bears this output folder's name, otherwise a new table
    node is made. ``on_status(text, running)`` hears the cases done and failed, and the final outcome.
    ``env`` and ``python`` go to the :class:`~MedAICommonLib.jobs.worker.Worker`.
    """

    def __init__(
        self,
        scene,
        pipeline,
        cases,
        output,
        workers: int | None = None,
        table_node=None,
        env: dict | None = None,
        python: list[str] | None = None,
    ):
        self.scene = scene
        self.pipeline = str(pipeline)
        self.cases, self.output = Path(cases), Path(output)
        self.workers = workers
        self.table_node = table_node
        self.env, self.python = env, python
        self.on_progress: Callable[[str, float], None] | None = None
        self.on_status: Callable[[str, bool], None] | None = None
        self.worker: Worker | None = None
        self.manifest: Path | None = None
        self.status = ""

    def _check(self) -> tuple[Path, Path]:
        """The pipeline file and the manifest to run, checked the way ``medai batch`` checks them."""
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"The number of workers must be 1 or more, got {self.workers}.")
        if self.output.is_file():
            raise ValueError(f"The output {self.output} is a file; choose a folder for the results.")
        pipeline = find_pipeline(self.pipeline)
        with tempfile.TemporaryDirectory(prefix="medai-batch-") as folder:
            manifest = read_manifest(_manifest(self.cases, self.output, Path(folder)))
            load_pipeline(pipeline, manifest.columns, manifest.cases[0].values)
        if self.cases.is_file():
            return pipeline, self.cases
        self.output.mkdir(parents=True, exist_ok=True)
        return pipeline, _manifest(self.cases, self.output, self.output)

    def start(self) -> BatchJob:
        """Check the pipeline and the cases (``ValueError`` says what to fix) and start the worker."""
        pipeline, self.manifest = self._check()
        args = ["batch", str(self.manifest), "--pipeline", str(pipeline), "--output", str(self.output)]
        if self.workers is not None:
            args += ["--workers", str(int(self.workers))]
        self.worker = Worker(args, on_progress=self._progress, env=self.env, python=self.python).start()
        self._tell("starting the workers", True)
        return self

    def _progress(self, stage: str, fraction: float) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, fraction)
        self._tell(stage, True)

    def _tell(self, text: str, running: bool) -> None:
        self.status = text
        if self.on_status is not None:
            self.on_status(text, running)

    def poll(self) -> WorkerState:
        """Drain the worker's progress and return its state; never blocks (call it from a timer)."""
        return self.worker.poll() if self.worker else WorkerState.NOT_STARTED

    def cancel(self) -> None:
        """Stop the worker and its Dask workers; the scene is untouched (finished cases stay on disk)."""
        if self.worker is not None:
            self.worker.cancel()
        self._tell("cancelled; the scene is unchanged", False)

    def finish(self) -> dict:
        """After the worker ended: ``{"table": node}`` when ``medai batch`` exited 0 or 3, else raise.

        Raises :class:`CancelledError` after a Cancel and ``RuntimeError`` with the worker's one-line error
        after any other ending; the scene is then unchanged.
        """
        result = self.worker.result() if self.worker else WorkerResult(WorkerState.NOT_STARTED, None)
        if result.state == WorkerState.CANCELLED:
            self._tell("cancelled; the scene is unchanged", False)
            raise CancelledError("Cancelled; the worker was stopped and the scene is unchanged.")
        if result.returncode not in (0, EXIT_SOME_FAILED):
            self._tell(f"failed: {result.error or 'the worker failed'}", False)
            raise RuntimeError((result.error or "the worker failed") + "; the scene is unchanged.")
        try:
            table = load_cohort_table(
                self.scene, self.output / "cohort.csv", cohort_table_name(self.output), node=self._target_table()
            )
        except (OSError, RuntimeError) as error:
            self._tell(f"failed: {error}", False)
            raise RuntimeError(f"medai batch ended without a readable cohort table ({error}).") from error
        self._tell(summary(table), False)
        return {"table": table}

    def _target_table(self):
        node = self.table_node
        usable = node is not None and self.scene.IsNodePresent(node)
        return node if usable and node.GetName() == cohort_table_name(self.output) else None

    def run(self, progress=None, timeout: float | None = None, interval: float = 0.1) -> dict:
        """Start, wait (reporting into ``progress``; its Cancel stops the worker) and finish."""
        if self.on_progress is None:
            self.on_progress = progress_reporter(progress)
        worker = self.start().worker
        assert worker is not None  # start() either started it or raised
        worker.wait(timeout=timeout, cancel_flag=(lambda: progress.cancelled) if progress else None, interval=interval)
        return self.finish()


def summary(table) -> str:
    """``"3 cases: 2 done, 1 failed (case002)"``, from a cohort table node."""
    statuses = bridge.columns_from_table(table)
    ids, status = statuses.get("id", []), statuses.get("status", [])
    failed = [case for case, state in zip(ids, status) if state != "done"]
    text = f"{len(ids)} cases: {len(ids) - len(failed)} done, {len(failed)} failed"
    if failed:
        text += f" ({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''})"
    return text


def job_from_panel(scene, p) -> BatchJob:
    """The :class:`BatchJob` of the panel's Batch section; ``ValueError`` when a choice is missing.

    ``p`` has the parameter node's fields ``batchPipeline`` (a shipped pipeline's name, or ``"file"``),
    ``batchPipelineFile``, ``batchInputKind`` (``"folder"`` or ``"manifest"``), ``batchInput``,
    ``batchOutputFolder``, ``batchWorkers`` and ``batchTable``.
    """
    pipeline = p.batchPipeline
    if pipeline == "file":
        pipeline = require_path(p.batchPipelineFile, "the pipeline file (YAML)", must_exist=True, kind="file")
    folder = p.batchInputKind == "folder"
    what = "the case folder" if folder else "the manifest (CSV)"
    cases = require_path(p.batchInput, what, must_exist=True, kind="folder" if folder else "file")
    output = require_path(p.batchOutputFolder, "the output folder", kind="folder")
    return BatchJob(scene, pipeline, cases, output, workers=p.batchWorkers, table_node=p.batchTable)
