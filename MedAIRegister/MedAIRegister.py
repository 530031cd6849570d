"""MedAIRegister: mutual-information, ICP and paired-landmark registration with quality metrics.

Module, Widget, Logic and Test as in Slicer's scripted-module template. The computing Logic is
``MedAIRegisterLib.logic.MedAIRegisterLogic`` (Qt-free, scene passed in); results are transform
nodes that, as the moving node's parent, align it with the fixed node.
"""

from typing import Annotated, Union

import slicer
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTransformNode,
)
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

from MedAICommonLib.progress import Progress
from MedAICommonLib.application.slicer_widget import MedAIWidgetBase


class MedAIRegister(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAI Registration")
        self.parent.categories = [_("MedAI"), _("Registration")]
        self.parent.dependencies = ["MedAICommon"]
        self.parent.contributors = ["MedAI contributors"]
        self.parent.helpText = _(
            "Align volumes (rigid, similarity, affine, B-spline; Mattes mutual information for CT/MR/PET), "
            "surfaces and point sets (ICP with multi-start) and paired landmarks (rigid, similarity, affine, "
            "thin-plate spline). The result is a transform node: make it the moving node's parent to align it "
            "with the fixed node. Segmentations and dose volumes follow through the same transform."
        )
        self.parent.acknowledgementText = _("MedAI builds on 3D Slicer, SimpleITK, VTK, SciPy and PyTorch.")


# A surface for ICP: a model, a markups point set or a segmentation (its first segment). Slicer's node
# combo box connector instantiates each annotated class to read its name, so only concrete classes
# work (vtkMRMLDisplayableNode is abstract); parameterNodeWrapper needs typing.Union (not ``A | B``,
# a different type before Python 3.14) with None last, as its GUI-connection guide says (5.8 to main).
SurfaceNode = Union[vtkMRMLModelNode, vtkMRMLMarkupsFiducialNode, vtkMRMLSegmentationNode, None]  # noqa: UP007


@parameterNodeWrapper
class MedAIRegisterParameterNode:
    """Panel state, saved with the scene."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    preset: Annotated[str, Choice(["auto", "ct-ct", "ct-mr-head", "mr-mr-brain", "pet-ct", "custom"])] = "auto"
    transformType: Annotated[str, Choice(["rigid", "similarity", "affine", "bspline"])] = "rigid"
    metric: Annotated[str, Choice(["mattes", "meansquares", "correlation"])] = "mattes"
    samplingPercentage: Annotated[float, WithinRange(0.1, 100.0)] = 10.0
    fixedMask: vtkMRMLSegmentationNode
    movingMask: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(["cpu", "simpleitk", "torch", "torch-cpu", "cuda", "auto"])] = "cpu"
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    fixedSurface: SurfaceNode
    movingSurface: SurfaceNode
    icpMode: Annotated[str, Choice(["point-to-plane", "point-to-point"])] = "point-to-plane"
    icpTransform: Annotated[str, Choice(["rigid", "similarity", "affine"])] = "rigid"
    icpAutoTrim: bool = True
    icpInlierFraction: Annotated[float, WithinRange(0.1, 1.0)] = 0.9
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    landmarkMethod: Annotated[str, Choice(["rigid", "similarity", "affine", "tps"])] = "rigid"


class MedAIRegisterWidget(MedAIWidgetBase):
    """Binds the panel to the parameter node and calls the Logic."""

    UI_FILE = "UI/MedAIRegister.ui"

    def make_logic(self):
        return MedAIRegisterLogic()

    def connect_buttons(self) -> None:
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.icpButton.connect("clicked(bool)", self.onICP)
        self.ui.landmarksButton.connect("clicked(bool)", self.onLandmarks)

    def choose_default_inputs(self, p) -> None:
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        if not p.fixedVolume and volumes:
            p.fixedVolume = volumes[0]
        if not p.movingVolume and len(volumes) > 1:
            p.movingVolume = volumes[1]

    def updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self.ui.registerButton.enabled = bool(p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.icpButton.enabled = bool(p.fixedSurface and p.movingSurface)
        self.ui.trimSpinBox.enabled = not p.icpAutoTrim
        self.ui.landmarksButton.enabled = bool(p.fixedLandmarks and p.movingLandmarks)

    def _show_result(self, transform, moving) -> None:
        if transform is not None:
            self._parameterNode.outputTransform = transform
            if moving is not None and moving.GetParentTransformNode() is None:
                moving.SetAndObserveTransformNodeID(transform.GetID())

    def onRegister(self) -> None:
        """Intensity registration (every transform type, masks and custom metric included) in a worker process:
        seconds to minutes on the CPU, so never on Slicer's GUI thread."""
        p = self._parameterNode
        self.run_job(
            _("Registration"),
            lambda: self.logic.registerJobFromParameters(p),
            on_done=lambda nodes: self._show_registration(nodes["transform"], nodes.get("volume")),
        )

    def _show_registration(self, transform, volume) -> None:
        p = self._parameterNode
        if volume is not None:
            p.outputVolume = volume
        self._show_result(transform, None if volume is not None else p.movingVolume)
        if volume is not None:
            slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=volume, foregroundOpacity=0.5)

    def onICP(self) -> None:
        transform = self.run_logic(_("ICP"), self.logic.icpFromParameters, self._parameterNode)
        self._show_result(transform, self._parameterNode.movingSurface)

    def onLandmarks(self) -> None:
        transform = self.run_logic(_("Landmark registration"), self.logic.landmarksFromParameters, self._parameterNode)
        self._show_result(transform, self._parameterNode.movingLandmarks)


class MedAIRegisterLogic(ScriptedLoadableModuleLogic):
    """Slicer-side Logic: the parameter node, and the headless Logic on ``slicer.mrmlScene``.

    The headless Logic (``core``) is imported on first use, so the module loads before its Python
    dependencies are installed; the panel ensures them (asking the user) before a run.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    @property
    def core(self):
        """``MedAIRegisterLib.logic.MedAIRegisterLogic`` on Slicer's scene."""
        if self._core is None:
            from MedAIRegisterLib.logic import MedAIRegisterLogic as MedAIRegisterCoreLogic

            self._core = MedAIRegisterCoreLogic(slicer.mrmlScene)
        return self._core

    def getParameterNode(self):
        return MedAIRegisterParameterNode(super().getParameterNode())

    @staticmethod
    def _mask(segmentation):
        """A (segmentation, first segment name) mask, as the Logic takes it, or None."""
        if segmentation is None or segmentation.GetSegmentation().GetNumberOfSegments() == 0:
            return None
        return segmentation, segmentation.GetSegmentation().GetNthSegment(0).GetName()

    def registerJobFromParameters(self, p):
        """Registration with the panel's settings as a worker job (see ``MedAIRegisterLib.worker_logic``):
        the same settings :meth:`registerFromParameters` gives the in-process Logic."""
        from MedAIRegisterLib.worker_logic import register_job

        return register_job(
            slicer.mrmlScene,
            p.fixedVolume,
            p.movingVolume,
            transform_type=p.transformType,
            preset=p.preset,
            device=p.device,
            output_transform_node=p.outputTransform,
            output_volume_node=p.outputVolume,
            metric=p.metric,
            sampling_percentage=p.samplingPercentage,
            fixed_mask=p.fixedMask,
            moving_mask=p.movingMask,
        )

    def registerFromParameters(self, p, progress=None):
        """Intensity-based registration of the moving volume onto the fixed one; returns the transform node.

        "custom" starts from the CT-CT preset's settings with the chosen metric.
        """
        return self.core.register_volumes(
            p.fixedVolume,
            p.movingVolume,
            transform_type=p.transformType,
            preset="ct-ct" if p.preset == "custom" else p.preset,
            device=p.device,
            metric=p.metric if p.preset == "custom" else None,
            fixed_mask=self._mask(p.fixedMask),
            moving_mask=self._mask(p.movingMask),
            sampling_percentage=p.samplingPercentage / 100.0,
            output_transform_node=p.outputTransform,
            output_volume_node=p.outputVolume,
            progress=progress or Progress(),
        )

    def icpFromParameters(self, p, progress=None):
        """ICP of the moving surface onto the fixed one; returns the transform node."""
        trim = "auto" if p.icpAutoTrim else p.icpInlierFraction
        return self.core.register_surfaces(
            p.fixedSurface,
            p.movingSurface,
            metric=p.icpMode,
            transform_type=p.icpTransform,
            trim_fraction=trim,
            output_transform_node=p.outputTransform,
            progress=progress or Progress(),
        )

    def landmarksFromParameters(self, p, progress=None):
        """Paired-landmark fit; returns the transform node."""
        return self.core.register_landmarks(
            p.fixedLandmarks,
            p.movingLandmarks,
            method=p.landmarkMethod,
            output_transform_node=p.outputTransform,
            progress=progress or Progress(),
        )


class MedAIRegisterTest(ScriptedLoadableModuleTest):
    """Runs the scenarios pytest runs (``MedAIRegisterLib/scenarios.py``) on Slicer's scene.

    Scenarios that need a Python package Slicer's testing mode does not install (torch, numba,
    scikit-image, MONAI) are reported as skipped with the package's name; any other error fails the test.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from MedAICommonLib.application.self_test import run_self_test

        run_self_test(
            "MedAIRegister",
            ["MedAIRegisterLib.scenarios"],
            slicer.mrmlScene,
            reset=self.setUp,
            display=self.delayDisplay,
        )
