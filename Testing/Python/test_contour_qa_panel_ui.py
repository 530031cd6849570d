"""The Contour QA section of MedAIPlan.ui against the code that binds it: widget names, parameters, modes, scenes.

Slicer binds a .ui widget to a parameter by its ``SlicerParameterName``; a name the module file or the Qt-free
panel code uses but the .ui lacks (or the reverse) only fails when the panel opens in Slicer, so it is read here.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from MedAIPlanLib.contour_qa import panel_logic
from MedAIPlanLib.contour_qa.metrics import Thresholds
from MedAIPlanLib.panel_state import CONTOUR_QA_MODES, contour_qa_widgets

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "MedAIPlan" / "Resources" / "UI" / "MedAIPlan.ui"
MODULE = REPO / "MedAIPlan" / "MedAIPlan.py"
NODE_SELECTORS = ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")


def _parameter_class() -> ast.ClassDef:
    tree = ast.parse(MODULE.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedAIPlanParameterNode")


def parameter_fields() -> dict[str, ast.AnnAssign]:
    return {n.target.id: n for n in _parameter_class().body if isinstance(n, ast.AnnAssign)}


def section() -> ET.Element:
    root = ET.parse(UI).getroot()
    return next(w for w in root.iter("widget") if w.get("name") == "contourQACollapsibleButton")


def bound(widget: ET.Element) -> str | None:
    prop = next((p for p in widget.findall("property") if p.get("name") == "SlicerParameterName"), None)
    return None if prop is None else prop.find("string").text


def test_section_is_collapsed_and_binds_every_qa_parameter():
    box = section()
    collapsed = next(p for p in box.findall("property") if p.get("name") == "collapsed")
    assert collapsed.find("bool").text == "true"
    widgets = {w.get("name"): w for w in box.iter("widget")}
    bindings = {bound(w): w.get("class") for w in widgets.values() if bound(w)}
    qa_fields = {name for name in parameter_fields() if name.startswith("qa")}
    assert set(bindings) == qa_fields  # every qa* parameter has its widget in this section, and only there
    assert bindings["qaMode"] == "QComboBox"
    assert bindings["qaProbabilityFolder"] == "ctkPathLineEdit"
    assert {bindings[n] for n in ("qaDose", "qaReference", "qaCandidate", "qaTable", "qaChart")} == {
        "qMRMLNodeComboBox"
    }
    # the widget code enables these by name, and the button is what the widget connects
    assert set(contour_qa_widgets(_parameters())) <= set(widgets)
    assert {"contourQAButton", "qaProbabilityVolumesSelector"} <= set(widgets)
    assert bound(widgets["qaProbabilityVolumesSelector"]) is None  # no connector for a checkable list: read on run
    source = MODULE.read_text()
    assert 'self.ui.contourQAButton.connect("clicked(bool)", self.onContourQA)' in source
    assert "self.ui.qaProbabilityVolumesSelector.checkedNodes()" in source


def test_mode_choices_and_defaults_match_the_logic_and_the_cli():
    fields = parameter_fields()
    mode = ast.literal_eval(fields["qaMode"].annotation.slice.elts[1].args[0])
    assert tuple(mode) == CONTOUR_QA_MODES == panel_logic.MODES
    assert ast.literal_eval(fields["qaMode"].value) == panel_logic.CANDIDATE_MODE
    defaults = {name: ast.literal_eval(f.value) for name, f in fields.items() if name.startswith("qa") and f.value}
    settings, limits = panel_logic.ContourQASettings(), Thresholds()
    assert defaults["qaDmeanGy"] == settings.dmean_gy == limits.dmean_gy
    assert defaults["qaDmeanPercent"] == settings.dmean_percent == limits.dmean_percent
    assert defaults["qaTargetD95Percent"] == settings.target_d95_percent == limits.target_d95_percent
    assert defaults["qaToleranceMm"] == settings.tolerance_mm == 2.0  # medai contour-qa --tolerance-mm default
    combo = next(w for w in section().iter("widget") if w.get("name") == "qaModeComboBox")
    assert tuple(i.find("property/string").text for i in combo.findall("item")) == CONTOUR_QA_MODES


def test_panel_code_reads_only_parameters_that_exist():
    """``p.qaX`` in the Qt-free panel code (settings, enabling) names a field of the parameter node."""
    used = set()
    for path in (Path(panel_logic.__file__), REPO / "MedAIPlan" / "MedAIPlanLib" / "panel_state.py", MODULE):
        used |= set(re.findall(r"\bp\.(qa\w+)", path.read_text()))
    assert {"qaDose", "qaReference", "qaCandidate", "qaProbabilityFolder", "qaTable", "qaChart"} <= used
    assert used - set(parameter_fields()) == set()


@pytest.mark.parametrize("module", ["MedAISeg", "MedAIRegister", "MedAIPlan"])
def test_every_node_selector_receives_the_scene(module):
    """A node selector not connected to ``mrmlSceneChanged`` lists no node at all in Slicer."""
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") in NODE_SELECTORS}
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert selectors
    assert selectors - connected == set()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {w.get("class") for w in root.iter("widget") if w.get("class").startswith(("qMRML", "ctk"))} <= declared


def _parameters(**values) -> SimpleNamespace:
    p = dict(
        qaDose=None,
        qaReference=None,
        qaCandidate=None,
        qaMode=CONTOUR_QA_MODES[0],
        qaProbabilityFolder=Path(),
        qaTargetSegment="",
        qaPrescriptionGy=0.0,
        qaDmeanGy=1.0,
        qaDmeanPercent=3.0,
        qaTargetD95Percent=2.0,
        qaToleranceMm=2.0,
        qaConstraints="",
        qaTable=None,
        qaChart=None,
    )
    return SimpleNamespace(**(p | values))


def test_widgets_follow_the_mode_and_the_button_waits_for_its_inputs(scene, tmp_path):
    dose = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dose")
    reference, candidate = (scene.AddNewNodeByClass("vtkMRMLSegmentationNode", n) for n in ("ref", "cand"))
    empty = contour_qa_widgets(_parameters())
    assert empty == {
        "qaCandidateSelector": True,
        "qaProbabilityFolderLineEdit": False,
        "qaProbabilityVolumesSelector": False,
        "contourQAButton": False,
    }
    assert not contour_qa_widgets(_parameters(qaDose=dose, qaReference=reference))["contourQAButton"]
    assert contour_qa_widgets(_parameters(qaDose=dose, qaReference=reference, qaCandidate=candidate))["contourQAButton"]
    bands = contour_qa_widgets(_parameters(qaDose=dose, qaReference=reference, qaMode=CONTOUR_QA_MODES[1]))
    assert bands == {
        "qaCandidateSelector": False,
        "qaProbabilityFolderLineEdit": True,
        "qaProbabilityVolumesSelector": True,
        "contourQAButton": True,
    }
    chosen = _parameters(qaDose=dose, qaReference=reference, qaMode=CONTOUR_QA_MODES[1], qaProbabilityFolder=tmp_path)
    assert not contour_qa_widgets(chosen)["qaProbabilityVolumesSelector"]  # the folder wins: volumes greyed
