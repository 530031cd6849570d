"""The plan-evaluation commands as a user runs them: files in, files and a JSON report out."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from MedAICommonLib.cli.main import main


def test_medai_gamma_report_and_volume(shared_data, tmp_path):
    folder = shared_data / "rt" / "SlicerRT"
    report, gamma_path = tmp_path / "gamma.json", tmp_path / "G.nrrd"
    code = main(["gamma", str(folder / "EclipseEnt_Dose.nrrd"), str(folder / "EclipseEnt_Dose_Day2.nrrd"),
                 "--dose-percent", "3", "--dta-mm", "3", "--threshold-percent", "10", "--device", "cpu",
                 "--output-gamma", str(gamma_path), "--report", str(report)])
    assert code == 0
    data = json.loads(report.read_text())
    baseline = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "GammaVolume_EclipseEnt_Day1Day2_Baseline.nrrd")))
    expected = 100.0 * np.mean(baseline[baseline > 0] <= 1.0)
    assert abs(data["metrics"]["pass_rate"] - expected) <= 0.5
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(gamma_path)))
    assert np.abs(written - baseline).max() < 1e-3


def test_medai_dvh_on_rtdose_and_rtstruct(shared_data, tmp_path):
    """Nelms' SI cylinder on the 2 mm SI-gradient RTDOSE: mean 16 Gy, D95 within 1 % of the analytical value."""
    base = shared_data / "rt" / "nelms-dvh-benchmark"
    report = tmp_path / "dvh.json"
    code = main(["dvh", str(base / "dose_grids" / "Linear_SupInf_2mm_Aligned.dcm"),
                 str(base / "structures" / "Cylinder_20_0.dcm"), "--v-doses", "16",
                 "--table", str(tmp_path / "metrics.csv"), "--report", str(report)])
    assert code == 0
    structures = json.loads(report.read_text())["metrics"]["structures"]
    (name, m), = structures.items()
    # the imported RTSTRUCT keeps its planar contours, so the DVH is contour-exact (analytical: 16 Gy, 50 %)
    assert abs(m["Dmean_Gy"] - 16.0) < 0.16
    assert abs(m["V16Gy_percent"] - 50.0) < 1.0
    assert abs(m["volume_cc"] - 11.7621) < 0.01 * 11.7621
    assert (tmp_path / "metrics.csv").exists()


def test_medai_rt_import_export_isodose(shared_data, tmp_path):
    rd = shared_data / "rt" / "pydicom" / "rtdose.dcm"
    assert main(["rt-import", str(rd), str(shared_data / "rt" / "pydicom" / "rtplan.dcm"),
                 "--output-dir", str(tmp_path / "in"), "--report", str(tmp_path / "i.json")]) == 0
    dose_file = tmp_path / "in" / "rtdose.nrrd"
    assert (tmp_path / "in" / "rtplan_beams.csv").exists()
    assert main(["rt-export", str(tmp_path / "out"), "--dose", str(dose_file), "--report", str(tmp_path / "e.json")]) == 0
    assert main(["rt-import", str(tmp_path / "out" / "RTDOSE.dcm"), "--output-dir", str(tmp_path / "back")]) == 0
    a = sitk.ReadImage(str(dose_file))
    b = sitk.ReadImage(str(tmp_path / "back" / "RTDOSE.nrrd"))
    assert np.abs(sitk.GetArrayFromImage(a) - sitk.GetArrayFromImage(b)).max() < 1e-6
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    prostate = shared_data / "rt" / "SlicerRT" / "EclipseProstate_Dose.nrrd"
    assert main(["isodose", str(prostate), str(tmp_path / "iso"), "--levels", "20,45", "--gy",
                 "--report", str(tmp_path / "iso.json")]) == 0
    assert json.loads((tmp_path / "iso.json").read_text())["metrics"]["surfaces"] == 2


def test_medai_gamma_bad_input_one_line_error(tmp_path, capsys):
    code = main(["gamma", str(tmp_path / "missing.nrrd"), str(tmp_path / "missing2.nrrd")])
    assert code == 1
    assert capsys.readouterr().err.count("\n") == 1
