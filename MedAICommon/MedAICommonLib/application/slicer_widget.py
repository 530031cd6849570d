"""Base for MedAI module widgets in Slicer: parameter node binding, progress bar, Cancel, errors.

Follows Slicer's scripted-module template (``parameterNodeWrapper`` + ``connectGui``); the
module widgets only add their buttons and call their Logic through :meth:`run_logic` (light work,
in-process with progress and Cancel) or :meth:`run_job` (heavy work: AI inference, training,
deformable registration, planning) in a separate process that exchanges files with the scene, so
Slicer stays responsive and a crash, out-of-memory kill or Cancel cannot take the user's scene with it.
Only imported inside the Slicer application.
"""

from __future__ import annotations

import logging

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from ..jobs.job_messages import job_failure_message
from ..progress import CancelledError, Progress
from .slicer_app import ensure_requirements, ensure_torch, progress_to_status_bar


class MedAIWidgetBase(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Common widget behaviour; subclasses set ``UI_FILE``, ``make_logic`` and ``connect_buttons``."""

    UI_FILE = ""
    NEEDS_TORCH = True

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._progress: Progress | None = None
        self._job = None
        self._jobTimer = None

    # --- template lifecycle -----------------------------------------------------------
    def setup(self) -> None:
        """Load the .ui, create the Logic, observe scene closing, bind the parameter node."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(self.UI_FILE))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.make_logic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.cancelButton.enabled = False
        self.connect_buttons()
        self.initializeParameterNode()

    def make_logic(self):
        """Return the module's Logic (override)."""
        raise NotImplementedError

    def connect_buttons(self) -> None:
        """Connect the module's action buttons (override)."""

    def cleanup(self) -> None:
        """Stop a running worker and remove observers when the module is unloaded."""
        self._stop_job()
        self.removeObservers()

    def enter(self) -> None:
        """Bind the parameter node when the module is shown."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Unbind the GUI from the parameter node when another module is shown."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._stop_job()  # its outputs would belong to a scene that no longer exists
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Bind the module's parameter node, choosing default inputs from the scene."""
        self.setParameterNode(self.logic.getParameterNode())
        self.choose_default_inputs(self._parameterNode)

    def choose_default_inputs(self, parameterNode) -> None:
        """Fill empty inputs with the first suitable nodes (override)."""

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI to a parameter node (or disconnect with None)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        """Enable action buttons whose inputs are set (override)."""

    # --- running ---------------------------------------------------------------------
    def ensure_dependencies(self) -> bool:
        """torch (through the PyTorch extension) and ``Resources/requirements-<ModuleName>.txt``, asking first.

        Each module has its own requirements file: Slicer installs every scripted module of an extension
        into one folder, so four ``requirements.txt`` would overwrite each other.
        """
        name = self.moduleName
        if self.NEEDS_TORCH and not ensure_torch(name):
            return False
        return ensure_requirements(self.resourcePath(f"requirements-{name}.txt"), name)

    def dependencies_ready(self, title: str) -> bool:
        """:meth:`ensure_dependencies` with its errors shown: a failed install opens the error dialog with
        its cause, a declined one leaves a status line saying what is missing; no traceback either way."""
        ready = False
        try:
            with slicer.util.tryWithErrorDisplay(
                _("{title}: the required Python packages could not be installed.").format(title=title)
            ):
                ready = bool(self.ensure_dependencies())
        except Exception as error:  # noqa: BLE001 - shown in the dialog; the panel stays usable
            logging.info("MedAI %s: dependency check failed: %s", title, error)
        if not ready:
            self.ui.statusLabel.text = _(
                "{title}: required Python packages are missing (installation declined or failed); nothing was run."
            ).format(title=title)
        return ready

    def run_logic(self, title: str, function, *args, **kwargs):
        """Run a Logic call with progress, Cancel and an error dialog; returns its result or None.

        Only for light work (seconds); anything that reads many files, trains, infers with a network or
        writes exports goes through :meth:`run_job`, so Slicer's window never freezes.
        """
        if not self.dependencies_ready(title):
            return None
        self._progress = Progress(progress_to_status_bar(self.ui.progressBar))
        self.ui.cancelButton.enabled = True
        self.ui.statusLabel.text = _("{title}...").format(title=title)
        result = None
        try:
            with slicer.util.tryWithErrorDisplay(_("{title} failed.").format(title=title), waitCursor=True):
                try:
                    result = function(*args, progress=self._progress, **kwargs)
                    self.ui.statusLabel.text = _("{title}: done.").format(title=title)
                except CancelledError:
                    self.ui.statusLabel.text = _("{title}: cancelled; the scene is unchanged.").format(title=title)
        except Exception as error:  # noqa: BLE001 - already shown in the error dialog
            logging.info("MedAI %s failed: %s", title, error)
            self.ui.statusLabel.text = _("{title} failed: {error}").format(title=title, error=error)
        finally:
            self.ui.cancelButton.enabled = False
            self.ui.progressBar.setValue(0)
            self._progress = None
        return result

    def run_job(self, title: str, make_job, on_done=None) -> bool:
        """Run a :class:`~MedAICommonLib.jobs.scene_job.SceneJob` in a worker process without blocking Slicer.

        ``make_job()`` builds the job from the panel's state (a ``ValueError`` it raises is shown as the
        reason); a Qt timer polls the worker, showing its stage in the progress bar and the status bar;
        Cancel kills the worker within a second. The outputs enter the scene only when the worker
        succeeded, then ``on_done(nodes)`` runs. Returns whether the job started.
        """
        if self._job is not None:
            slicer.util.warningDisplay(_("Another MedAI run is still in progress; wait for it or cancel it."))
            return False
        if not self.dependencies_ready(title):
            return False
        try:
            with slicer.util.tryWithErrorDisplay(_("{title} could not start.").format(title=title)):
                job = make_job()
                job.on_progress = lambda stage, fraction: self._show_job_progress(title, stage, fraction)
                job.start()
        except Exception as error:  # noqa: BLE001 - already shown in the error dialog
            self.ui.statusLabel.text = _("{title} could not start: {error}").format(title=title, error=error)
            return False
        self._job, self._jobTitle, self._jobDone = job, title, on_done
        self.ui.cancelButton.enabled = True
        self.ui.statusLabel.text = _("{title}: running in a separate process...").format(title=title)
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(100)
        self._jobTimer.connect("timeout()", self._poll_job)
        self._jobTimer.start()
        return True

    def _show_job_progress(self, title: str, stage: str, fraction: float) -> None:
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        slicer.util.showStatusMessage(f"{title}: {stage} ({100 * fraction:.0f} %)")

    def _poll_job(self) -> None:
        from ..jobs.worker import WorkerState

        if self._job is None or self._job.poll() == WorkerState.RUNNING:
            return
        job, title, on_done = self._job, self._jobTitle, self._jobDone
        self._stop_job(cancel=False)
        self.ui.progressBar.setValue(0)
        outcome = job.worker.result() if getattr(job, "worker", None) is not None else None
        try:
            nodes = job.finish()
        except CancelledError:
            self.ui.statusLabel.text = _("{title}: cancelled; the scene is unchanged.").format(title=title)
            return
        except Exception as error:  # noqa: BLE001 - the worker's own words go to the dialog
            self._show_job_failure(title, error, outcome)
            return
        self.ui.statusLabel.text = _("{title}: done.").format(title=title)
        if on_done is not None:
            try:
                with slicer.util.tryWithErrorDisplay(_("{title}: showing the result failed.").format(title=title)):
                    on_done(nodes)
            except Exception as error:  # noqa: BLE001 - already shown in the error dialog
                self.ui.statusLabel.text = _("{title}: showing the result failed: {error}").format(
                    title=title, error=error
                )

    def _show_job_failure(self, title: str, error: Exception, outcome) -> None:
        """The error dialog for a failed worker: its one-line cause, and its stderr tail as details."""
        text, details = job_failure_message(_("{title} failed.").format(title=title), error, outcome)
        self.ui.statusLabel.text = text.replace("\n\n", " ")
        slicer.util.errorDisplay(text, detailedText=details)

    def _stop_job(self, cancel: bool = True) -> None:
        if self._jobTimer is not None:
            self._jobTimer.stop()
            self._jobTimer = None
        if self._job is not None and cancel:
            self._job.cancel()
        self._job = None
        self.ui.cancelButton.enabled = False

    def onCancel(self) -> None:
        """Stop the worker (at once) or ask the in-process computation to stop at its next step."""
        if self._job is not None:
            title = self._jobTitle
            self._stop_job(cancel=True)
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("{title}: cancelled; the scene is unchanged.").format(title=title)
            return
        if self._progress is not None:
            self._progress.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            qt.QApplication.processEvents()
