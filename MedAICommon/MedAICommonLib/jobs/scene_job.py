"""A Logic call run in a worker process that exchanges files with the MRML scene.

This is how the panels run heavy work (AI inference, training, deformable registration, dose
planning), as Slicer's established AI extensions do: the inputs are written to a private temporary
folder, ``medai COMMAND ...`` runs in a child process (:mod:`MedAICommonLib.jobs.worker`), and only when
it succeeded are its output files read back into the scene, creating the output nodes or updating the
ones the user chose. A crash, an out-of-memory kill or a Cancel in the worker leaves the scene exactly
as it was, and the user's unsaved work stays in the Slicer process.

Arguments are written with placeholders: ``"{in:ct}"`` is replaced by the file the input node
``ct`` was written to, ``"{out:seg}"`` by the file the output ``seg`` is expected in, ``"{dir}"`` by
the job's folder::

    job = SceneJob(scene, ["segment", "{in:ct}", "{out:seg}", "--model", model_dir],
                   inputs={"ct": ct_node},
                   outputs=[JobOutput("seg", "segmentation.seg.nrrd", "CT segmentation")])
    nodes = job.run(progress)            # batches and tests; the panel polls job.poll() from a timer
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import bridge
from ..progress import CancelledError
from .worker import Worker, WorkerResult, WorkerState, progress_reporter

_PLACEHOLDER = re.compile(r"\{(in|out):([A-Za-z0-9_]+)\}|\{dir\}")

_INPUT_SUFFIX = {
    "vtkMRMLSegmentationNode": ".seg.nrrd",
    "vtkMRMLScalarVolumeNode": ".nrrd",
    "vtkMRMLLabelMapVolumeNode": ".nrrd",
    "vtkMRMLMarkupsFiducialNode": ".mrk.json",
    "vtkMRMLLinearTransformNode": ".h5",
    "vtkMRMLTransformNode": ".h5",
    "vtkMRMLModelNode": ".vtk",
}


@dataclass
class JobOutput:
    """One file the worker writes and the node it becomes.

    ``kind`` is what :func:`MedAICommonLib.bridge.load_node` reads ("volume", "segmentation",
    "transform", ...; guessed from ``filename`` when empty). ``node`` is an existing node to update
    (its name, display and references are kept); otherwise a node called ``name`` is created.
    ``after_load(node)`` marks what files cannot carry (e.g. SlicerRT's dose-volume attributes).
    ``optional`` outputs that the worker did not write are skipped instead of failing the job.
    """

    key: str
    filename: str
    name: str
    kind: str = ""
    node: object | None = None
    after_load: Callable | None = None
    optional: bool = False


class SceneJob:
    """A ``medai`` command in a worker, reading its inputs from and its outputs into ``scene``.

    ``env`` and ``python`` go to the :class:`~MedAICommonLib.jobs.worker.Worker` (extra environment, e.g. a
    ``PYTHONPATH``; the interpreter command); they may also be set on the job before it starts.
    """

    def __init__(
        self,
        scene,
        args: list[str],
        inputs: dict | None = None,
        outputs: list[JobOutput] | None = None,
        on_progress=None,
        workdir=None,
        env: dict | None = None,
        python: list[str] | None = None,
    ):
        self.scene = scene
        self.args = list(args)
        self.inputs = dict(inputs or {})
        self.outputs = list(outputs or [])
        self.on_progress = on_progress
        self.env = env
        self.python = python
        self._parent_dir = workdir
        self.folder: Path | None = None
        self.worker: Worker | None = None
        self._check_placeholders()

    def _check_placeholders(self) -> None:
        outputs = {o.key for o in self.outputs}
        for arg in self.args:
            for match in _PLACEHOLDER.finditer(arg):
                kind, key = match.group(1), match.group(2)
                if kind == "in" and key not in self.inputs:
                    raise ValueError(f"The job's argument {arg!r} names an input {key!r} that was not given.")
                if kind == "out" and key not in outputs:
                    raise ValueError(f"The job's argument {arg!r} names an output {key!r} that was not given.")
        for key, node in self.inputs.items():
            if node is None:
                raise ValueError(f"The job's input {key!r} is not set; select a node for it first.")

    # --- life cycle ------------------------------------------------------------------
    def start(self) -> SceneJob:
        """Write the inputs to a private folder and start the worker."""
        self.folder = Path(tempfile.mkdtemp(prefix="medai-job-", dir=self._parent_dir))
        try:
            files = {key: self._write_input(key, node) for key, node in self.inputs.items()}
            args = [self._expand(arg, files) for arg in self.args]
            self.worker = Worker(args, on_progress=self.on_progress, env=self.env, python=self.python).start()
        except Exception:
            self._cleanup()
            raise
        return self

    def poll(self) -> WorkerState:
        """Drain the worker's progress and return its state; never blocks (call it from a timer)."""
        return self.worker.poll() if self.worker else WorkerState.NOT_STARTED

    def cancel(self) -> None:
        """Stop the worker (its whole process group) and forget its files; the scene is untouched."""
        if self.worker is not None:
            self.worker.cancel()
        self._cleanup()

    def finish(self) -> dict:
        """After the worker ended: load the outputs into the scene if it succeeded, else raise.

        Returns ``{key: node}``. Raises :class:`CancelledError` after a Cancel and ``RuntimeError``
        with the worker's one-line error after a failure; in both cases the scene is unchanged.
        """
        try:
            result = self.worker.result() if self.worker else WorkerResult(WorkerState.NOT_STARTED, None)
            if result.state == WorkerState.CANCELLED:
                raise CancelledError("Cancelled; the worker was stopped and the scene is unchanged.")
            if result.state != WorkerState.SUCCEEDED:
                raise RuntimeError((result.error or "the worker failed") + "; the scene is unchanged.")
            return self._load_outputs()
        finally:
            self._cleanup()

    def run(self, progress=None, timeout: float | None = None, interval: float = 0.05) -> dict:
        """Start, wait (reporting into ``progress``; its Cancel stops the worker) and finish."""
        if self.on_progress is None:
            self.on_progress = progress_reporter(progress)
        self.start()
        self.worker.wait(
            timeout=timeout, cancel_flag=(lambda: progress.cancelled) if progress else None, interval=interval
        )
        return self.finish()

    # --- files -----------------------------------------------------------------------
    def _write_input(self, key: str, node) -> Path:
        suffix = next((s for cls, s in _INPUT_SUFFIX.items() if node.IsA(cls)), None)
        if suffix is None:
            raise ValueError(f"The job's input {key!r} is a {node.GetClassName()}, which cannot be passed to a worker.")
        return bridge.save_node(node, self.folder / f"in-{key}{suffix}", compress=False)

    def _expand(self, arg: str, files: dict) -> str:
        def replace(match):
            if match.group(0) == "{dir}":
                return str(self.folder)
            kind, key = match.group(1), match.group(2)
            if kind == "in":
                return str(files[key])
            return str(self._output_path(key))

        return _PLACEHOLDER.sub(replace, arg)

    def _output_path(self, key: str) -> Path:
        output = next(o for o in self.outputs if o.key == key)
        return self.folder / output.filename

    def _load_outputs(self) -> dict:
        missing = [o.filename for o in self.outputs if not o.optional and not (self.folder / o.filename).is_file()]
        if missing:
            raise RuntimeError(f"The worker ended without writing {', '.join(missing)}; the scene is unchanged.")
        staging = _staging_scene()
        loaded = {}
        for output in self.outputs:
            path = self.folder / output.filename
            if path.is_file():
                loaded[output.key] = bridge.load_node(staging, path, output.kind or None)
        created, nodes = [], {}
        try:
            for output in self.outputs:
                if output.key not in loaded:
                    continue
                node = output.node or self.scene.AddNewNodeByClass(loaded[output.key].GetClassName(), output.name)
                if output.node is None:
                    created.append(node)
                _copy_content(loaded[output.key], node)
                if output.after_load is not None:
                    output.after_load(node)
                nodes[output.key] = node
        except Exception:
            bridge.remove_nodes(self.scene, created)
            raise
        return nodes

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _staging_scene():
    import slicer

    return slicer.vtkMRMLScene()


def _copy_content(source, target) -> None:
    """Data and geometry of ``source`` into ``target``; ``target``'s name, display and references stay."""
    if target.GetClassName() != source.GetClassName() and not (
        target.IsA("vtkMRMLTransformNode") and source.IsA("vtkMRMLTransformNode")
    ):
        raise RuntimeError(
            f"The output node {target.GetName()!r} is a {target.GetClassName()}, "
            f"but the worker produced a {source.GetClassName()}; choose a matching node."
        )
    target.CopyContent(source, True)
    if target.GetDisplayNode() is None and hasattr(target, "CreateDefaultDisplayNodes"):
        target.CreateDefaultDisplayNodes()
