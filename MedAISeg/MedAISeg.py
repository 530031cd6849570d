"""MedAISeg: preprocessing, classical and AI segmentation, post-processing, lesions, evaluation.

Module, Widget, Logic and Test as in Slicer's scripted-module template. The computing Logic is
``MedAISegLib.logic.MedAISegLogic`` (Qt-free, scene passed in, also used by ``medai`` and pytest);
the Logic class here adds Slicer's parameter node and maps it to Logic calls.
"""

from pathlib import Path
from typing import Annotated

import slicer
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

from MedAICommonLib.paths import require_path
from MedAICommonLib.application.slicer_widget import MedAIWidgetBase


class MedAISeg(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAI Segmentation")
        self.parent.categories = [_("MedAI"), _("Segmentation")]
        self.parent.dependencies = ["MedAICommon"]
        self.parent.contributors = ["MedAI contributors"]
        self.parent.helpText = _(
            "Turn a CT or MR volume into a labelled segmentation: denoising (GPU non-local means, "
            "anisotropic diffusion, CLAHE, N4), threshold / Otsu / region growing, MONAI bundles and "
            "TorchScript models with sliding-window inference, clean-up, lesion detection and evaluation "
            "against a reference (Dice, HD95, ...). The same operations run headless with the "
            "<code>medai</code> command.")
        self.parent.acknowledgementText = _(
            "MedAI builds on 3D Slicer, MONAI, PyTorch, SimpleITK and VTK.")


@parameterNodeWrapper
class MedAISegParameterNode:
    """Panel state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    preprocessMethod: Annotated[str, Choice(["nlm", "anisotropic", "curvature", "clahe", "histogram", "n4",
                                              "normalize"])] = "nlm"
    preprocessedVolume: vtkMRMLScalarVolumeNode
    segmentMethod: Annotated[str, Choice(["otsu", "threshold", "region-growing", "model"])] = "otsu"
    lowerThreshold: float = 100.0
    upperThreshold: float = 3000.0
    seeds: vtkMRMLMarkupsFiducialNode
    modelPath: Path
    flipTTA: bool = False
    computeUncertainty: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    keepLargestComponent: bool = False
    fillHoles: bool = True
    minIslandMm3: Annotated[float, WithinRange(0.0, 1e6)] = 0.0
    lesionTable: vtkMRMLTableNode
    trainingLabels: vtkMRMLSegmentationNode
    network: Annotated[str, Choice(["segresnet", "unet", "dynunet", "swinunetr"])] = "segresnet"
    epochs: Annotated[int, WithinRange(1, 10000)] = 50
    trainingSpacingMm: Annotated[float, WithinRange(0.3, 10.0)] = 1.5
    bundleFolder: Path
    referenceSegmentation: vtkMRMLSegmentationNode
    evaluationTable: vtkMRMLTableNode
    # Batch: a shipped pipeline by name (MedAICommonLib.cohort.pipeline.shipped_pipelines), or "file"
    batchPipeline: Annotated[str, Choice(["segmentation-cohort", "planning-cohort", "contour-qa-cohort",
                                          "file"])] = "segmentation-cohort"
    batchPipelineFile: Path
    batchInputKind: Annotated[str, Choice(["folder", "manifest"])] = "folder"
    batchInput: Path
    batchOutputFolder: Path
    batchWorkers: Annotated[int, WithinRange(1, 64)] = 2
    batchTable: vtkMRMLTableNode


def _model(p):
    """The chosen model path (TorchScript file or MONAI bundle folder); ValueError when it is not chosen."""
    return require_path(p.modelPath, "the model (TorchScript file or MONAI bundle folder)", must_exist=True)


def _bundle_folder(p):
    """The chosen bundle folder that training writes; ValueError when it is not chosen."""
    return require_path(p.bundleFolder, "the bundle folder (where the trained model is written)", kind="folder")


class MedAISegWidget(MedAIWidgetBase):
    """Binds the panel to the parameter node and calls the Logic."""

    UI_FILE = "UI/MedAISeg.ui"

    def make_logic(self):
        return MedAISegLogic()

    def connect_buttons(self) -> None:
        self.ui.preprocessButton.connect("clicked(bool)", self.onPreprocess)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.postprocessButton.connect("clicked(bool)", self.onPostprocess)
        self.ui.lesionsButton.connect("clicked(bool)", self.onLesions)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTune)
        self.ui.explainButton.connect("clicked(bool)", self.onExplain)
        from MedAICommonLib.application.batch_section import BatchSection

        self.batchSection = BatchSection(self)
        self.batchSection.connect()

    def choose_default_inputs(self, p) -> None:
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        from MedAISegLib.panel_state import batch_widgets, seg_buttons

        for name, enabled in {**seg_buttons(p), **batch_widgets(p)}.items():
            getattr(self.ui, name).enabled = enabled

    def onPreprocess(self) -> None:
        """Denoising filters in a worker process (minutes on a CT); intensity mappings in this one."""
        from MedAISegLib.preprocess_worker_logic import runs_in_worker

        p = self._parameterNode
        if runs_in_worker(p.preprocessMethod):
            self.run_job(_("Preprocessing"), lambda: self.logic.preprocessJobFromParameters(p),
                         on_done=lambda nodes: self._show_preprocessed(nodes["volume"]))
            return
        self._show_preprocessed(self.run_logic(_("Preprocessing"), self.logic.preprocessFromParameters, p))

    def _show_preprocessed(self, node) -> None:
        if node is not None:
            self._parameterNode.preprocessedVolume = node
            slicer.util.setSliceViewerLayers(background=node, fit=True)

    def onSegment(self) -> None:
        p = self._parameterNode
        if p.segmentMethod == "model":  # AI inference: in a worker process, after the trust check
            trust = self.confirm_bundle_trust(p.modelPath)
            if trust is not None:
                self.run_job(_("Segmentation"), lambda: self.logic.segmentJobFromParameters(p, trust_bundle=trust),
                             on_done=lambda nodes: self._show_segmentation(nodes["segmentation"]))
            return
        self._show_segmentation(self.run_logic(_("Segmentation"), self.logic.segmentFromParameters, p))

    def _show_segmentation(self, node) -> None:
        if node is not None:
            self._parameterNode.outputSegmentation = node
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume)

    def confirm_bundle_trust(self, model_path):
        """None if the user declined (or the model is not chosen); else whether to pass ``--trust-bundle``.

        MONAI bundle configs can run Python code: a bundle from outside the catalogue (or one edited
        since it was trusted) runs only after the user saw where it comes from and agreed. Reading the
        bundle's configuration digest is light (a few small files), so it stays on the GUI thread.
        """
        if not self.dependencies_ready(_("Segmentation")):
            return None
        try:
            with slicer.util.tryWithErrorDisplay(_("The model cannot be used.")):
                model_path = str(require_path(model_path, "the model (TorchScript file or MONAI bundle folder)",
                                              must_exist=True))
                info = self.logic.core.bundle_trust_info(model_path)
        except Exception as error:  # noqa: BLE001 - already shown in the error dialog
            self.ui.statusLabel.text = str(error)
            return None
        if not info.get("needs_trust"):
            return False
        changed = _("It was trusted before, but its configuration changed since.") if info.get("changed") else ""
        text = _("This MONAI bundle is not from the MedAI model catalogue:\n{path}\n\n"
                 "Its configuration files can run Python code on this computer. {changed}\n"
                 "Configuration digest (sha256): {digest}\n\n"
                 "Run it only if you trust where it came from. Trust this bundle and run it?").format(
            path=info.get("path", model_path), changed=changed, digest=info.get("digest", "?"))
        return True if slicer.util.confirmYesNoDisplay(text, windowTitle=_("Trust this model?")) else None

    def onPostprocess(self) -> None:
        self.run_logic(_("Clean-up"), self.logic.postprocessFromParameters, self._parameterNode)

    def onLesions(self) -> None:
        table = self.run_logic(_("Lesion detection"), self.logic.lesionsFromParameters, self._parameterNode)
        if table is not None:
            self._parameterNode.lesionTable = table
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    def onEvaluate(self) -> None:
        table = self.run_logic(_("Evaluation"), self.logic.evaluateFromParameters, self._parameterNode)
        if table is not None:
            self._parameterNode.evaluationTable = table
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


    def onTrain(self) -> None:
        p = self._parameterNode

        def done(_nodes):
            p.modelPath = p.bundleFolder

        self.run_job(_("Training"), lambda: self.logic.trainJobFromParameters(p), on_done=done)

    def onFineTune(self) -> None:
        p = self._parameterNode

        def done(_nodes):
            p.modelPath = p.bundleFolder

        self.run_job(_("Fine-tuning"), lambda: self.logic.fineTuneJobFromParameters(p), on_done=done)

    def onExplain(self) -> None:
        """Saliency of the model (torch inference with gradients): in a worker process, after the trust check."""
        p = self._parameterNode
        trust = self.confirm_bundle_trust(p.modelPath)
        if trust is not None:
            self.run_job(_("Saliency"), lambda: self.logic.explainJobFromParameters(p, trust_bundle=trust),
                         on_done=lambda nodes: self._show_saliency(nodes["saliency"]))

    def _show_saliency(self, node) -> None:
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, foreground=node,
                                         foregroundOpacity=0.5)


class MedAISegLogic(ScriptedLoadableModuleLogic):
    """Slicer-side Logic: the parameter node, and the headless Logic on ``slicer.mrmlScene``.

    The headless Logic (``core``, ``training``) is imported on first use, so the module loads even
    before torch and MONAI are installed; the panel ensures them (asking the user) before a run.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None
        self._training = None

    @property
    def core(self):
        """``MedAISegLib.logic.MedAISegLogic`` on Slicer's scene."""
        if self._core is None:
            from MedAISegLib.logic import MedAISegLogic as MedAISegCoreLogic

            self._core = MedAISegCoreLogic(slicer.mrmlScene)
        return self._core

    @property
    def training(self):
        """``MedAISegLib.training_logic.MedAITrainingLogic`` on Slicer's scene."""
        if self._training is None:
            from MedAISegLib.training_logic import MedAITrainingLogic

            self._training = MedAITrainingLogic(slicer.mrmlScene)
        return self._training

    def getParameterNode(self):
        return MedAISegParameterNode(super().getParameterNode())

    def trainFromParameters(self, p, progress=None):
        """Train a new model on the input volume and its labelled case; returns the training result."""
        from MedAISegLib.learning.training import TrainingConfig

        config = TrainingConfig(network=p.network, epochs=p.epochs, spacing_mm=(p.trainingSpacingMm,) * 3)
        return self.training.train([p.inputVolume], [p.trainingLabels], str(_bundle_folder(p)), config,
                                   device=p.device, progress=progress)

    def fineTuneFromParameters(self, p, progress=None):
        """Fine-tune the current model on the labelled case (e.g. a corrected result); returns the result."""
        return self.training.fine_tune_on_case(p.inputVolume, p.trainingLabels, str(_model(p)),
                                               str(_bundle_folder(p)), epochs=p.epochs, device=p.device,
                                               progress=progress)

    def explainFromParameters(self, p, progress=None):
        """Saliency volume of the current model for its first label; returns the volume node."""
        return self.training.explain(p.inputVolume, str(_model(p)), device=p.device)

    def explainJobFromParameters(self, p, trust_bundle: bool = False):
        """Saliency of the current model for its first label as a worker job (see ``MedAISegLib.worker_logic``)."""
        from MedAISegLib.worker_logic import explain_job

        return explain_job(slicer.mrmlScene, p.inputVolume, str(_model(p)), device=p.device, trust_bundle=trust_bundle)

    def preprocessFromParameters(self, p, progress=None):
        """Run the chosen preprocessing on the input; returns the output volume node."""
        return self.core.denoise(p.inputVolume, p.preprocessMethod, output_node=p.preprocessedVolume,
                                 device=p.device, progress=progress)

    def preprocessJobFromParameters(self, p):
        """Preprocessing as a worker job (see ``MedAISegLib.preprocess_worker_logic``)."""
        from MedAISegLib.preprocess_worker_logic import denoise_job

        return denoise_job(slicer.mrmlScene, p.inputVolume, p.preprocessMethod, device=p.device,
                           output_node=p.preprocessedVolume)

    def segmentJobFromParameters(self, p, trust_bundle: bool = False):
        """AI segmentation as a worker job (see ``MedAISegLib.worker_logic``)."""
        from MedAISegLib.worker_logic import segment_with_model_job

        return segment_with_model_job(slicer.mrmlScene, [p.inputVolume], str(_model(p)), device=p.device,
                                      flip_tta=p.flipTTA, output_node=p.outputSegmentation, trust_bundle=trust_bundle,
                                      uncertainty=p.computeUncertainty)

    def trainJobFromParameters(self, p):
        """Training on the input volume and its labels as a worker job writing the bundle folder."""
        from MedAISegLib.worker_logic import train_job

        return train_job(slicer.mrmlScene, [p.inputVolume], [p.trainingLabels], str(_bundle_folder(p)),
                         network=p.network, epochs=p.epochs, spacing_mm=p.trainingSpacingMm, device=p.device)

    def fineTuneJobFromParameters(self, p):
        """"Fine-tune on this case" (the input volume and its corrected labels) as a worker job."""
        from MedAISegLib.worker_logic import fine_tune_job

        return fine_tune_job(slicer.mrmlScene, p.inputVolume, p.trainingLabels, str(_model(p)),
                             str(_bundle_folder(p)), epochs=p.epochs, device=p.device)

    def segmentFromParameters(self, p, progress=None):
        """Segment the input with the chosen method; returns the segmentation node."""
        if p.segmentMethod == "model":
            return self.core.segment_with_model([p.inputVolume], str(_model(p)), device=p.device,
                                                flip_tta=p.flipTTA, output_node=p.outputSegmentation,
                                                return_entropy=p.computeUncertainty, progress=progress)
        if p.segmentMethod == "region-growing":
            return self.core.region_growing(p.inputVolume, p.seeds, lower=p.lowerThreshold, upper=p.upperThreshold,
                                            output_node=p.outputSegmentation, progress=progress)
        if p.segmentMethod == "otsu":
            return self.core.otsu(p.inputVolume, output_node=p.outputSegmentation, progress=progress)
        return self.core.threshold(p.inputVolume, p.lowerThreshold, p.upperThreshold,
                                   output_node=p.outputSegmentation, progress=progress)

    def postprocessFromParameters(self, p, progress=None):
        """Apply the checked clean-up operations to every segment of the output segmentation (in place:
        the user pressed "Clean up" on that segmentation)."""
        return self.core.postprocess(p.outputSegmentation, keep_largest=p.keepLargestComponent,
                                     fill_holes=p.fillHoles, min_island_mm3=p.minIslandMm3,
                                     output_node=p.outputSegmentation, progress=progress)

    def lesionsFromParameters(self, p, progress=None):
        """Detect lesions in the output segmentation; returns the lesion table node."""
        _markups, table = self.core.detect_lesions(p.outputSegmentation, intensity_node=p.inputVolume,
                                                   table_node=p.lesionTable, progress=progress)
        return table

    def evaluateFromParameters(self, p, progress=None):
        """Compare the output segmentation with the reference; returns the metrics table node."""
        return self.core.evaluate(p.referenceSegmentation, p.outputSegmentation, table_node=p.evaluationTable,
                                  progress=progress)


class MedAISegTest(ScriptedLoadableModuleTest):
    """Runs the scenarios pytest runs (``MedAISegLib/scenarios.py``) on Slicer's scene.

    Scenarios that need a Python package Slicer's testing mode does not install (torch, numba,
    scikit-image, MONAI) are reported as skipped with the package's name; any other error fails the test.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from MedAICommonLib.application.self_test import run_self_test

        run_self_test("MedAISeg", ["MedAISegLib.scenarios"], slicer.mrmlScene, reset=self.setUp, display=self.delayDisplay)
