"""MedAICommon: hidden Slicer module that carries MedAI's shared code.

Slicer puts every scripted module's folder on ``sys.path``; this hidden module's folder holds
``MedAICommonLib`` (geometry conventions, MRML bridge, headless runtime, reports, ``medai``
CLI), which MedAISeg, MedAIRegister and MedAIPlan import. It has no panel of its own; its self-test
checks the common layer the three modules stand on.
"""

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class MedAICommon(ScriptedLoadableModule):
    """Hidden module: makes MedAICommonLib importable by the other MedAI modules."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAI Common")
        self.parent.categories = [_("MedAI")]
        self.parent.dependencies = []
        self.parent.hidden = True
        self.parent.contributors = ["MedAI contributors"]
        self.parent.helpText = _("Shared code of the MedAI extension (MRML bridge, headless runtime, reports).")
        self.parent.acknowledgementText = _("MedAI builds on 3D Slicer, MONAI, SimpleITK, VTK, pydicom and PyTorch.")


class MedAICommonTest(ScriptedLoadableModuleTest):
    """Runs the common layer's scenarios (``MedAICommonLib/synthetic/scenarios.py``, also run by pytest) on Slicer's scene:
    RAS/LPS geometry, the bridge's file round trip of a generated volume and segmentation, and a worker
    started in PythonSlicer (skipped with a message when this Slicer has none on its PATH)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from MedAICommonLib.application.self_test import run_self_test

        run_self_test(
            "MedAICommon",
            ["MedAICommonLib.synthetic.scenarios"],
            slicer.mrmlScene,
            reset=self.setUp,
            display=self.delayDisplay,
        )
