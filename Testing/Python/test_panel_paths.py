"""Unset paths stay unset in the panels: Slicer's parameter node gives ``Path('.')`` for a path never chosen,
and no button may enable, no import scan and no export write on it."""

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from MedAICommonLib.paths import chosen_path, is_unset_path, require_path
from MedAIPlanLib.panel_state import plan_buttons
from MedAIPlanLib.rt_worker_logic import rt_files_to_import
from MedAISegLib.panel_state import seg_buttons

REPO = Path(__file__).resolve().parents[2]


def ui_widget_names(module: str) -> set[str]:
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    return {w.get("name") for w in root.iter("widget")}


@pytest.mark.parametrize("value", [None, "", "   ", ".", Path(), Path(""), Path(".")])
def test_what_slicer_gives_for_an_unset_path_is_unset(value):
    assert is_unset_path(value)
    assert chosen_path(value) is None
    with pytest.raises(ValueError, match="Choose the bundle folder first"):
        require_path(value, "the bundle folder")


def test_a_chosen_path_is_kept_and_checked(tmp_path):
    assert not is_unset_path(tmp_path)
    assert chosen_path(str(tmp_path)) == tmp_path
    assert require_path(tmp_path, "the export folder", kind="folder") == tmp_path
    assert require_path(tmp_path / "new", "the export folder") == tmp_path / "new"  # an output may be new
    with pytest.raises(ValueError, match="relative path"):
        require_path("models/net.ts", "the model")
    with pytest.raises(ValueError, match="does not exist"):
        require_path(tmp_path / "absent.ts", "the model", must_exist=True)
    with pytest.raises(ValueError, match="folder of the report does not exist"):
        require_path(tmp_path / "no" / "report.pdf", "the report")
    with pytest.raises(ValueError, match="must be a file"):
        require_path(tmp_path, "the report", kind="file")


def seg_parameters(scene, **overrides):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    labels = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "labels")
    values = {
        "inputVolume": volume,
        "segmentMethod": "model",
        "seeds": None,
        "modelPath": Path(),
        "outputSegmentation": None,
        "referenceSegmentation": None,
        "trainingLabels": labels,
        "bundleFolder": Path(),
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def test_seg_model_and_training_buttons_wait_for_chosen_paths(scene, tmp_path):
    unset = seg_buttons(seg_parameters(scene))
    assert set(unset) <= ui_widget_names("MedAISeg")
    assert unset["preprocessButton"]
    for name in ("segmentButton", "trainButton", "fineTuneButton", "explainButton"):
        assert not unset[name], name
    model = tmp_path / "net.ts"
    chosen = seg_buttons(seg_parameters(scene, modelPath=model, bundleFolder=tmp_path / "bundle"))
    for name in ("segmentButton", "trainButton", "fineTuneButton", "explainButton"):
        assert chosen[name], name


def test_seg_region_growing_needs_seeds(scene):
    p = seg_parameters(scene, segmentMethod="region-growing")
    assert not seg_buttons(p)["segmentButton"]
    p.seeds = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seeds")
    assert seg_buttons(p)["segmentButton"]
    assert seg_buttons(seg_parameters(scene, segmentMethod="otsu"))["segmentButton"]


def test_plan_rt_buttons_wait_for_chosen_paths(scene, tmp_path):
    dose = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dose")
    p = SimpleNamespace(
        ctVolume=None,
        structures=None,
        targetSegment="",
        doseVolume=dose,
        referenceDose=None,
        evaluatedDose=None,
        rtImportPath=Path(),
        rtExportFolder=Path(),
    )
    unset = plan_buttons(p)
    assert set(unset) <= ui_widget_names("MedAIPlan")
    assert not unset["rtImportButton"]
    assert not unset["rtExportButton"]
    assert unset["isodoseButton"]
    p.rtImportPath, p.rtExportFolder = tmp_path, tmp_path / "export"
    chosen = plan_buttons(p)
    assert chosen["rtImportButton"]
    assert chosen["rtExportButton"]
    assert not chosen["planButton"]


def test_rt_import_finds_the_rt_files_of_a_folder_and_skips_the_ct(shared_data):
    found = rt_files_to_import(shared_data / "rt" / "dicompyler-core")
    assert [f.name for f in found["RTSTRUCT"]] == ["rtss.dcm"]
    assert [f.name for f in found["RTPLAN"]] == ["rtplan.dcm"]
    assert found["RTDOSE"] == []  # ct.0.dcm is a CT slice: read up to its Modality and left out
    single = rt_files_to_import(shared_data / "rt" / "pydicom" / "rtdose.dcm")
    assert [f.name for f in single["RTDOSE"]] == ["rtdose.dcm"]


def test_rt_import_refuses_unset_empty_and_oversized_folders(tmp_path, shared_data):
    with pytest.raises(ValueError, match="not set"):
        rt_files_to_import(Path())  # would have scanned Slicer's working directory
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match=r"No RTDOSE, RTSTRUCT or RTPLAN found .*1 file"):
        rt_files_to_import(tmp_path)
    with pytest.raises(ValueError, match="more than 2 files"):
        rt_files_to_import(shared_data / "rt" / "pydicom", max_files=2)


@pytest.mark.parametrize("module", ["MedAISeg", "MedAIRegister", "MedAIPlan"])
def test_module_files_never_use_a_path_parameter_raw(module):
    """``str(p.modelPath)`` or ``Path(p.rtImportPath)`` turn an unset path into ``"."``: every ``Path`` parameter
    is read through MedAICommonLib.paths (or a helper built on it)."""
    import ast

    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    parameters = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    path_fields = {
        n.target.id for n in parameters.body if isinstance(n, ast.AnnAssign) and ast.unparse(n.annotation) == "Path"
    }
    raw = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) in ("str", "Path", "pathlib.Path")
        and any(
            isinstance(part, ast.Attribute) and part.attr in path_fields
            for argument in node.args
            for part in ast.walk(argument)
        )
    ]
    assert raw == []
