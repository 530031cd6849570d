"""MedAIPlan: photon dose estimation and plan optimisation, DVH, gamma, isodose, DICOM-RT.

Module, Widget, Logic and Test as in Slicer's scripted-module template. The computing Logic is
``MedAIPlanLib.logic.MedAIPlanLogic`` (dose engine, optimisation) and
``MedAIPlanLib.evaluation_logic.PlanEvaluationLogic`` (DVH, gamma, isodose, DICOM-RT), both
Qt-free with the scene passed in. Dose volumes are marked the way SlicerRT marks them, so
SlicerRT's DVH, isodose and dose-comparison modules accept them too.
"""

from pathlib import Path
from typing import Annotated

import slicer
import qt
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

from MedAICommonLib.paths import chosen_path, require_path
from MedAICommonLib.progress import Progress
from MedAICommonLib.application.slicer_widget import MedAIWidgetBase


class MedAIPlan(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAI Planning")
        self.parent.categories = [_("MedAI"), _("Radiotherapy")]
        self.parent.dependencies = ["MedAICommon"]
        self.parent.contributors = ["MedAI contributors"]
        self.parent.helpText = _(
            "Estimate the dose of an external-beam photon plan from a CT and a segmentation: HU to electron "
            "density, pencil-beam dose with matRad base data, fluence optimisation against target and organ "
            "objectives. Check plans with DVHs and dose metrics, gamma comparison and isodose surfaces, and "
            "exchange them as DICOM RTDOSE / RTSTRUCT / RTPLAN. Dose estimates are for research, not for "
            "clinical treatment.")
        self.parent.acknowledgementText = _(
            "The pencil-beam physics and base data follow matRad (BSD-3, DKFZ); RT conventions follow SlicerRT.")


@parameterNodeWrapper
class MedAIPlanParameterNode:
    """Panel state, saved with the scene (the plan's parameters travel with it)."""

    ctVolume: vtkMRMLScalarVolumeNode
    structures: vtkMRMLSegmentationNode
    targetSegment: str = ""
    prescriptionGy: Annotated[float, WithinRange(0.0, 200.0)] = 60.0
    fractions: Annotated[int, WithinRange(1, 100)] = 30
    gantryAngles: str = "0,51,102,153,204,255,306"
    bixelWidthMm: Annotated[float, WithinRange(1.0, 20.0)] = 5.0
    doseGridMm: Annotated[float, WithinRange(1.0, 10.0)] = 3.0
    autoDoseGrid: bool = False
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    outputDose: vtkMRMLScalarVolumeNode
    doseVolume: vtkMRMLScalarVolumeNode
    dvhMetricsTable: vtkMRMLTableNode
    planReportPath: Path
    isodoseLevels: str = "50,80,95,100,107"
    referenceDose: vtkMRMLScalarVolumeNode
    evaluatedDose: vtkMRMLScalarVolumeNode
    dosePercent: Annotated[float, WithinRange(0.1, 20.0)] = 3.0
    dtaMm: Annotated[float, WithinRange(0.1, 20.0)] = 3.0
    thresholdPercent: Annotated[float, WithinRange(0.0, 100.0)] = 10.0
    localGamma: bool = False
    gammaVolume: vtkMRMLScalarVolumeNode
    rtImportPath: Path
    rtExportFolder: Path
    deidentify: bool = False
    qaDose: vtkMRMLScalarVolumeNode
    qaReference: vtkMRMLSegmentationNode
    qaMode: Annotated[str, Choice(["candidate segmentation", "probability volumes"])] = "candidate segmentation"
    qaCandidate: vtkMRMLSegmentationNode
    qaProbabilityFolder: Path
    qaTargetSegment: str = ""
    qaPrescriptionGy: Annotated[float, WithinRange(0.0, 200.0)] = 0.0
    qaDmeanGy: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    qaDmeanPercent: Annotated[float, WithinRange(0.0, 100.0)] = 3.0
    qaTargetD95Percent: Annotated[float, WithinRange(0.0, 100.0)] = 2.0
    qaToleranceMm: Annotated[float, WithinRange(0.0, 50.0)] = 2.0
    qaConstraints: str = ""
    qaTable: vtkMRMLTableNode
    qaChart: vtkMRMLPlotChartNode


def _numbers(text: str) -> list[float]:
    """Comma-separated numbers from a text field, with a clear error."""
    try:
        return [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError as error:
        raise ValueError(f"Expected comma-separated numbers, got {text!r}") from error


FLAGGED_ROW_COLOUR = "#f6c4c0"


def colour_flagged_rows(table_node, model_rows) -> int:
    """Tint ``model_rows`` (rows of Slicer's table model) in every table view showing ``table_node`` and clear
    the others; returns how many views were coloured.

    A table node holds no colours, so the background role is set on ``qMRMLTableModel``'s items. The model writes
    every item change it hears back into the table node (as text), so its signals are blocked meanwhile and the
    view repainted after; a later update of the node keeps the items, and a re-run colours them anew."""
    layout, flagged, coloured = slicer.app.layoutManager(), set(model_rows), 0
    for index in range(layout.tableViewCount):
        view = layout.tableWidget(index).tableView()
        shown = view.mrmlTableNode()
        if shown is None or shown.GetID() != table_node.GetID():
            continue
        model = view.tableModel()
        was_blocked = model.blockSignals(True)
        try:
            for row in range(model.rowCount()):
                brush = qt.QBrush(qt.QColor(FLAGGED_ROW_COLOUR)) if row in flagged else qt.QBrush()
                for column in range(model.columnCount()):
                    model.setData(model.index(row, column), brush, qt.Qt.BackgroundRole)
        finally:
            model.blockSignals(was_blocked)
        view.viewport().update()
        coloured += 1
    return coloured


class MedAIPlanWidget(MedAIWidgetBase):
    """Binds the panel to the parameter node and calls the Logic."""

    UI_FILE = "UI/MedAIPlan.ui"

    def make_logic(self):
        return MedAIPlanLogic()

    def connect_buttons(self) -> None:
        self.ui.planButton.connect("clicked(bool)", self.onPlan)
        self.ui.dvhButton.connect("clicked(bool)", self.onDVH)
        self.ui.isodoseButton.connect("clicked(bool)", self.onIsodose)
        self.ui.gammaButton.connect("clicked(bool)", self.onGamma)
        self.ui.rtImportButton.connect("clicked(bool)", self.onRTImport)
        self.ui.rtExportButton.connect("clicked(bool)", self.onRTExport)
        self.ui.contourQAButton.connect("clicked(bool)", self.onContourQA)

    def choose_default_inputs(self, p) -> None:
        if not p.ctVolume:
            p.ctVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not p.structures:
            p.structures = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        from MedAIPlanLib.panel_state import contour_qa_widgets, plan_buttons

        for name, enabled in (plan_buttons(p) | contour_qa_widgets(p)).items():
            getattr(self.ui, name).enabled = enabled

    def onPlan(self) -> None:
        """Dose-influence matrix and optimisation in a worker process (minutes on a large CT)."""
        self.run_job(_("Planning"), lambda: self.logic.planJobFromParameters(self._parameterNode),
                     on_done=lambda nodes: self._show_dose(nodes["dose"]))

    def _show_dose(self, dose) -> None:
        self._parameterNode.outputDose = dose
        self._parameterNode.doseVolume = dose
        slicer.util.setSliceViewerLayers(background=self._parameterNode.ctVolume, foreground=dose,
                                         foregroundOpacity=0.5)

    def onDVH(self) -> None:
        table = self.run_logic(_("DVH"), self.logic.dvhFromParameters, self._parameterNode)
        if table is not None:
            self._parameterNode.dvhMetricsTable = table

    def onIsodose(self) -> None:
        self.run_logic(_("Isodose"), self.logic.isodoseFromParameters, self._parameterNode)

    def onGamma(self) -> None:
        """The gamma search in a worker process (minutes on the CPU for a fine search on a clinical grid)."""
        p = self._parameterNode

        def done(nodes):
            gamma = nodes["gamma"]
            p.gammaVolume = gamma
            self.ui.statusLabel.text = _("Gamma: pass rate {rate:.2f} %.").format(
                rate=float(gamma.GetAttribute("MedAI.GammaPassRate")))

        self.run_job(_("Gamma"), lambda: self.logic.gammaJobFromParameters(p), on_done=done)

    def onContourQA(self) -> None:
        """Contour QA in-process (seconds): the ranked table and the paired DVHs in the Four-Up Plot Table layout,
        the flagged structures' rows coloured."""
        from MedAIPlanLib.contour_qa.panel_logic import show_in_layout, table_model_rows

        p = self._parameterNode
        out = self.run_logic(_("Contour QA"), self.logic.contourQAFromParameters, p,
                             self.ui.qaProbabilityVolumesSelector.checkedNodes())
        if out is None:
            return
        p.qaTable, p.qaChart = out.table, out.chart
        show_in_layout(slicer.mrmlScene, slicer.app.applicationLogic(), out.table, out.chart)
        rows = table_model_rows(out.table, out.flagged)
        if not colour_flagged_rows(out.table, rows):  # a table view made by this layout switch shows it a moment later
            qt.QTimer.singleShot(0, lambda: colour_flagged_rows(out.table, rows))
        self.ui.statusLabel.text = _("Contour QA: {flagged} of {total} structures flagged.").format(
            flagged=len(out.flagged), total=out.table.GetNumberOfRows())

    def onRTImport(self) -> None:
        """Reads the chosen RT files with progress and Cancel (a bounded, header-only scan finds them)."""
        self.run_logic(_("DICOM-RT import"), self.logic.rtImportFromParameters, self._parameterNode)

    def onRTExport(self) -> None:
        """Contouring and writing run in a worker process; de-identification (if asked) after it succeeded."""
        p = self._parameterNode
        dose, structures, deidentify = p.doseVolume, p.structures, p.deidentify
        folder = p.rtExportFolder

        def done(_nodes):
            written = self.logic.rtExportFinished(folder, dose, structures, deidentify)
            self.ui.statusLabel.text = _("DICOM-RT export: wrote {files}.").format(
                files=", ".join(str(path) for path in written))

        self.run_job(_("DICOM-RT export"), lambda: self.logic.rtExportJobFromParameters(p), on_done=done)


class MedAIPlanLogic(ScriptedLoadableModuleLogic):
    """Slicer-side Logic: the parameter node, and the dose-engine and evaluation Logic on ``slicer.mrmlScene``.

    The headless Logic (``core``, ``evaluation``) is imported on first use, so the module loads before
    torch is installed; the panel ensures it (asking the user) before a run.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None
        self._evaluation_logic = None

    @property
    def core(self):
        """``MedAIPlanLib.logic.MedAIPlanLogic`` on Slicer's scene."""
        if self._core is None:
            from MedAIPlanLib.logic import MedAIPlanLogic as MedAIPlanCoreLogic

            self._core = MedAIPlanCoreLogic(slicer.mrmlScene)
        return self._core

    @property
    def evaluation(self):
        """``MedAIPlanLib.evaluation_logic.PlanEvaluationLogic`` on Slicer's scene."""
        if self._evaluation_logic is None:
            from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

            self._evaluation_logic = PlanEvaluationLogic(slicer.mrmlScene)
        return self._evaluation_logic

    def getParameterNode(self):
        return MedAIPlanParameterNode(super().getParameterNode())

    def planJobFromParameters(self, p):
        """Planning as a worker job (see ``MedAIPlanLib.worker_logic``)."""
        from MedAIPlanLib.worker_logic import plan_job

        return plan_job(slicer.mrmlScene, p.ctVolume, p.structures, target=p.targetSegment,
                        prescription_gy=p.prescriptionGy, fractions=p.fractions,
                        gantry_angles=_numbers(p.gantryAngles), bixel_width_mm=p.bixelWidthMm,
                        dose_grid_mm=p.doseGridMm, device=p.device, output_dose_node=p.outputDose,
                        auto_dose_grid=p.autoDoseGrid)

    def planFromParameters(self, p, progress=None):
        """Beams, dose-influence matrix, fluence optimisation; returns the dose volume node (Gy)."""
        return self.core.plan(p.ctVolume, p.structures, target=p.targetSegment, prescription_gy=p.prescriptionGy,
                              fractions=p.fractions, gantry_angles=_numbers(p.gantryAngles),
                              bixel_width_mm=p.bixelWidthMm, dose_grid_mm=p.doseGridMm, device=p.device,
                              output_dose_node=p.outputDose, auto_dose_grid=p.autoDoseGrid, progress=progress)

    def _report_to(self, progress) -> None:
        self.evaluation.progress = progress or Progress()

    def dvhFromParameters(self, p, progress=None):
        """DVH tables, plot and metrics table (CI/HI/GI for the target when set); returns the metrics table."""
        self._report_to(progress)
        result = self.evaluation.compute_dvh(
            p.doseVolume, p.structures, prescription_gy=p.prescriptionGy,
            target_segment=p.targetSegment or None)
        report = chosen_path(p.planReportPath)
        if report is not None:  # optional: an unset path (Path('.')) writes no report
            report = require_path(report, "the plan report file (.pdf or .png)", kind="file")
            self.evaluation.write_report(str(report), p.doseVolume, result, ct_node=p.ctVolume,
                                         isodose_levels_gy=[p.prescriptionGy * v / 100.0
                                                            for v in _numbers(p.isodoseLevels)],
                                         structures_node=p.structures, target=p.targetSegment or None,
                                         prescription_gy=p.prescriptionGy)
        return result.metrics_table

    def isodoseFromParameters(self, p, progress=None):
        """Isodose surfaces at percentages of the prescription; returns the model nodes."""
        self._report_to(progress)
        models, _legend, _levels = self.evaluation.isodose(
            p.doseVolume, _numbers(p.isodoseLevels), prescription_gy=p.prescriptionGy, percent=True)
        return models

    def gammaJobFromParameters(self, p):
        """Gamma comparison as a worker job (see ``MedAIPlanLib.gamma_worker_logic``)."""
        from MedAIPlanLib.gamma_worker_logic import gamma_job

        return gamma_job(slicer.mrmlScene, p.referenceDose, p.evaluatedDose, dose_percent=p.dosePercent,
                         dta_mm=p.dtaMm, threshold_percent=p.thresholdPercent, local=p.localGamma, device=p.device,
                         output_node=p.gammaVolume)

    def gammaFromParameters(self, p, progress=None):
        """Gamma index volume of the evaluated dose against the reference; returns the gamma volume node."""
        self._report_to(progress)
        node, _result = self.evaluation.gamma(
            p.referenceDose, p.evaluatedDose, dose_percent=p.dosePercent, dta_mm=p.dtaMm,
            threshold_percent=p.thresholdPercent, local=p.localGamma, device=p.device, output_node=p.gammaVolume)
        return node

    def contourQAFromParameters(self, p, probability_volumes=(), progress=None):
        """Contour QA of the panel's structure sets on its dose (``MedAIPlanLib.contour_qa.panel_logic``): a
        ranked table node and a paired-DVH chart; returns its ``ContourQAOutput``."""
        from MedAIPlanLib.contour_qa.panel_logic import run_from_parameters

        return run_from_parameters(slicer.mrmlScene, p, probability_volumes, progress)

    def rtImportFromParameters(self, p, progress=None):
        """Import the RTDOSE / RTSTRUCT / RTPLAN files of the chosen file or folder; returns the nodes.

        RTSTRUCT contours are rasterised on the CT's grid when a CT is selected."""
        from MedAIPlanLib.rt_worker_logic import rt_files_to_import

        self._report_to(progress)
        found = rt_files_to_import(p.rtImportPath)
        nodes = [self.evaluation.import_rtdose(file) for file in found["RTDOSE"]]
        nodes += [self.evaluation.import_rtstruct(file, reference_node=p.ctVolume) for file in found["RTSTRUCT"]]
        nodes += [self.evaluation.import_rtplan(file)[0] for file in found["RTPLAN"]]
        return nodes

    def rtExportJobFromParameters(self, p):
        """DICOM-RT export of the dose and structures as a worker job (see ``MedAIPlanLib.rt_worker_logic``)."""
        from MedAIPlanLib.rt_worker_logic import rt_export_job

        return rt_export_job(slicer.mrmlScene, p.rtExportFolder, dose_node=p.doseVolume, structures_node=p.structures)

    @staticmethod
    def rtExportFinished(folder, dose, structures, deidentify: bool) -> list:
        """After the export worker succeeded: the files it wrote, de-identified in place if asked."""
        from MedAIPlanLib.dicomrt.deidentify import UidMap, deidentify_file
        from MedAIPlanLib.rt_worker_logic import exported_modalities

        folder = require_path(folder, "the DICOM-RT export folder", kind="folder")
        paths = [folder / f"{modality}.dcm" for modality in exported_modalities(dose, structures)]
        if deidentify:
            uid_map = UidMap()
            for path in paths:
                deidentify_file(path, path, uid_map)
        return paths

    def rtExportFromParameters(self, p, progress=None):
        """Export dose (RTDOSE) and structures (RTSTRUCT) to a folder in this process (scripts), plus the plan
        (RTPLAN) when the dose is a MedAI plan; de-identified if asked; returns the paths."""
        from MedAIPlanLib.dicomrt.deidentify import UidMap, deidentify_file
        from MedAIPlanLib.plan_settings import is_plan_dose

        self._report_to(progress)
        folder = require_path(p.rtExportFolder, "the DICOM-RT export folder", kind="folder")
        is_plan = bool(p.structures and is_plan_dose(p.doseVolume))
        if is_plan:
            paths = self.evaluation.export_plan(str(folder), p.doseVolume, p.structures)
        else:
            paths = self.evaluation.export_rt(str(folder), dose_node=p.doseVolume, segmentation_node=p.structures)
        if p.deidentify:
            uid_map = UidMap()
            for path in paths.values():
                deidentify_file(path, path, uid_map)
        return paths


class MedAIPlanTest(ScriptedLoadableModuleTest):
    """Runs the scenarios pytest runs (``MedAIPlanLib/scenarios.py``, ``evaluation_scenarios.py``) on Slicer's scene.

    Scenarios that need a Python package Slicer's testing mode does not install (torch, numba,
    scikit-image, MONAI) are reported as skipped with the package's name; any other error fails the test.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from MedAICommonLib.application.self_test import run_self_test

        run_self_test("MedAIPlan", ["MedAIPlanLib.scenarios", "MedAIPlanLib.evaluation_scenarios"], slicer.mrmlScene,
                      reset=self.setUp, display=self.delayDisplay)
