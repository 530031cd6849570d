"""MedAIPlan Logic, CLI and scenarios on real MRML nodes and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAIPlanLib import scenarios
from MedAIPlanLib.dose.matrad_io import load_matrad_patient, matrad_cube_to_kji
from MedAIPlanLib.logic import MedAIPlanLogic, default_machine_path


@pytest.fixture
def _machine(request, monkeypatch, tmp_path):
    """The photon base data shipped with the module (MedAIPlan/Resources), else the shared data folder's."""
    import MedAIPlanLib

    bundled = Path(MedAIPlanLib.__file__).resolve().parents[1] / "Resources" / "photons_Generic.mat"
    if bundled.is_file():
        monkeypatch.delenv("MEDAI_PHOTON_MACHINE", raising=False)
        monkeypatch.setenv("MEDAI_CACHE_DIR", str(tmp_path / "empty-cache"))  # no downloaded copy
        assert default_machine_path() == bundled  # found without ../shared/data
        return
    shared_data = request.getfixturevalue("shared_data")
    monkeypatch.setenv("MEDAI_PHOTON_MACHINE", str(shared_data / "rt" / "matRad" / "photons_Generic.mat"))


@pytest.mark.usefixtures("_machine")
def test_scenario_open_field_depth_dose(scene):
    scenarios.scenario_open_field_depth_dose(scene)


@pytest.mark.usefixtures("_machine")
def test_scenario_plan_covers_target_and_spares_organ(scene):
    scenarios.scenario_plan_covers_target_and_spares_organ(scene)


@pytest.mark.usefixtures("_machine")
def test_scenario_bad_inputs(scene):
    scenarios.scenario_bad_inputs_raise_clear_errors(scene)


@pytest.mark.usefixtures("_machine")
def test_scenario_memory_budget_refused_or_coarsened(scene):
    scenarios.scenario_memory_budget_refused_or_coarsened(scene)


@pytest.mark.usefixtures("_machine")
def test_load_matrad_into_nodes_keeps_overlapping_structures(scene, shared_data):
    path = shared_data / "rt" / "matRad" / "BOXPHANTOM.mat"
    logic = MedAIPlanLogic(scene)
    ct, seg = logic.load_matrad(path)
    patient = load_matrad_patient(path)
    hu, geo = bridge.array_from_volume(ct)
    assert np.array_equal(hu, patient.hu)
    # RAS node geometry = LPS matRad geometry: same voxel centres
    assert geo.to_space("LPS").same_grid(patient.geometry)
    for s in patient.structures:  # BODY contains the target: both masks kept exactly
        mask, _ = bridge.segment_mask(seg, s.name, reference=geo)
        assert np.array_equal(mask.astype(bool), s.mask), s.name


@pytest.mark.usefixtures("_machine")
def test_cli_dose_matches_matrad_reference(shared_data, tmp_path):
    path = shared_data / "rt" / "matRad" / "photons_testData.mat"
    out = tmp_path / "dose.nrrd"
    report = tmp_path / "r.json"
    code = main(
        [
            "dose",
            "--matrad",
            str(path),
            "--target",
            "Target",
            "--gantry-angles",
            "0,180",
            "--bixel-width",
            "10",
            "--output-dose",
            str(out),
            "--output-segmentation",
            str(tmp_path / "s.seg.nrrd"),
            "--per-beam-dir",
            str(tmp_path / "beams"),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    import scipy.io as sio

    from MedAICommonLib.runtime import create_runtime

    rt = create_runtime()
    node = bridge.load_volume(rt.scene, out)
    dose, geo = bridge.array_from_volume(node)
    ref = matrad_cube_to_kji(sio.loadmat(path, squeeze_me=True, struct_as_record=False)["resultGUI"].physicalDose)
    hot = ref > 0.5 * ref.max()
    assert np.max(np.abs(dose[hot] - ref[hot])) < 0.01 * ref.max()
    r = json.loads(report.read_text())
    assert r["metrics"]["num_bixels"] == 10
    assert len(r["outputs"]["beam_doses"]) == 2
    assert (tmp_path / "s.seg.nrrd").exists()
    rt.clear()


@pytest.mark.usefixtures("_machine")
def test_cli_plan_and_errors(shared_data, tmp_path, capsys):
    path = shared_data / "rt" / "matRad" / "photons_testData.mat"
    report = tmp_path / "p.json"
    code = main(
        [
            "plan",
            "--matrad",
            str(path),
            "--target",
            "Target",
            "--prescription",
            "60",
            "--fractions",
            "30",
            "--gantry-angles",
            "0,90,180,270",
            "--bixel-width",
            "10",
            "--dose-grid",
            "10",
            "--select-beams",
            "3",
            "--output-dose",
            str(tmp_path / "p.nrrd"),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    r = json.loads(report.read_text())
    assert r["metrics"]["target_D95_percent_of_prescription"] >= 95.0
    assert len(r["metrics"]["beams"]) == 3
    # objectives from the .mat's cst, scaled to the prescription (45 Gy in the file -> 60 Gy)
    assert r["parameters"]["objectives"][0]["dose"] == pytest.approx(60.0)
    assert (
        main(
            [
                "plan",
                "--matrad",
                str(path),
                "--target",
                "Tumour",
                "--prescription",
                "60",
                "--output-dose",
                str(tmp_path / "x.nrrd"),
            ]
        )
        == 1
    )
    assert "not found" in capsys.readouterr().err
    assert (
        main(
            [
                "plan",
                "--matrad",
                str(path),
                "--target",
                "Target",
                "--prescription",
                "-1",
                "--output-dose",
                str(tmp_path / "x.nrrd"),
            ]
        )
        == 1
    )
    assert "positive" in capsys.readouterr().err
    # over the memory budget: refused with the estimate and what to change, no output written
    assert (
        main(
            [
                "plan",
                "--matrad",
                str(path),
                "--target",
                "Target",
                "--prescription",
                "60",
                "--memory-limit-gb",
                "0.00001",
                "--output-dose",
                str(tmp_path / "m.nrrd"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "GiB" in err
    assert "--dose-grid" in err
    assert not (tmp_path / "m.nrrd").exists()


@pytest.mark.usefixtures("_machine")
def test_demo_step_plans_the_lesion(scene, tmp_path):
    import time

    from MedAICommonLib.progress import Progress
    from MedAICommonLib.report import Report
    from MedAICommonLib.synthetic.demo import DemoContext, prepare_inputs
    from MedAIPlanLib import demo

    context = DemoContext(scene=scene, output_dir=tmp_path, report=Report(command="demo"), progress=Progress())
    prepare_inputs(context)
    t0 = time.perf_counter()
    demo.run(context)
    elapsed = time.perf_counter() - t0
    plan = context.report.metrics["plan"]
    assert plan["target_D95_Gy"] >= 0.95 * plan["prescription_Gy"], plan
    assert (tmp_path / "plan_dose.nrrd").exists()
    assert len(context.panels) == 2
    assert elapsed < 60.0, elapsed  # < 20 s on an idle CPU; generous for a shared CI machine
