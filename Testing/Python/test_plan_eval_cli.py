"""The plan-evaluation commands as a user runs them: files in, files and a JSON report out."""

from __future__ import annotations

import json
import re

import numpy as np
import SimpleITK as sitk

from MedAICommonLib.cli.main import main


def test_medai_gamma_report_and_volume(shared_data, tmp_path):
    """SlicerRT's own (voxel-lattice) search reproduces its baseline volume through the command."""
    folder = shared_data / "rt" / "SlicerRT"
    report, gamma_path = tmp_path / "gamma.json", tmp_path / "G.nrrd"
    code = main(
        [
            "gamma",
            str(folder / "EclipseEnt_Dose.nrrd"),
            str(folder / "EclipseEnt_Dose_Day2.nrrd"),
            "--dose-percent",
            "3",
            "--dta-mm",
            "3",
            "--threshold-percent",
            "10",
            "--device",
            "cpu",
            "--interpolation",
            "none",
            "--output-gamma",
            str(gamma_path),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    data = json.loads(report.read_text())
    assert data["parameters"]["interpolation"] == "none"
    assert data["parameters"]["step_mm"] is None
    baseline = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "GammaVolume_EclipseEnt_Day1Day2_Baseline.nrrd")))
    expected = 100.0 * np.mean(baseline[baseline > 0] <= 1.0)
    assert abs(data["metrics"]["pass_rate"] - expected) <= 0.5
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(gamma_path)))
    assert np.abs(written - baseline).max() < 1e-3


def test_medai_gamma_default_is_the_library_default(shared_data, tmp_path):
    """Without options the command interpolates with step DTA/10, as gamma_index does by default."""
    from MedAICommonLib.geometry import Geometry
    from MedAIPlanLib.evaluation.gamma import gamma_index

    folder = shared_data / "rt" / "SlicerRT"
    report = tmp_path / "gamma.json"
    ref_path, ev_path = folder / "EclipseEnt_Dose.nrrd", folder / "EclipseEnt_Dose_Day2.nrrd"
    assert (
        main(
            [
                "gamma",
                str(ref_path),
                str(ev_path),
                "--threshold-percent",
                "90",
                "--device",
                "cpu",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    data = json.loads(report.read_text())
    assert data["parameters"]["interpolation"] == "trilinear"
    assert data["parameters"]["step_mm"] == 0.3
    images = [sitk.ReadImage(str(p)) for p in (ref_path, ev_path)]
    direct = gamma_index(
        sitk.GetArrayFromImage(images[0]),
        Geometry.from_sitk(images[0]),
        sitk.GetArrayFromImage(images[1]),
        Geometry.from_sitk(images[1]),
        threshold_percent=90.0,
    )
    assert data["metrics"]["pass_rate"] == direct.pass_rate
    assert data["metrics"]["evaluated_voxels"] == direct.evaluated_voxels


def test_medai_dvh_on_rtdose_and_rtstruct(shared_data, tmp_path):
    """Nelms' SI cylinder on the 2 mm SI-gradient RTDOSE: mean 16 Gy, D95 within 1 % of the analytical value."""
    base = shared_data / "rt" / "nelms-dvh-benchmark"
    report = tmp_path / "dvh.json"
    code = main(
        [
            "dvh",
            str(base / "dose_grids" / "Linear_SupInf_2mm_Aligned.dcm"),
            str(base / "structures" / "Cylinder_20_0.dcm"),
            "--v-doses",
            "16",
            "--table",
            str(tmp_path / "metrics.csv"),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    structures = json.loads(report.read_text())["metrics"]["structures"]
    ((name, m),) = structures.items()
    # the imported RTSTRUCT keeps its planar contours, so the DVH is contour-exact (analytical: 16 Gy, 50 %)
    assert abs(m["Dmean_Gy"] - 16.0) < 0.16
    assert abs(m["V16Gy_percent"] - 50.0) < 1.0
    assert abs(m["volume_cc"] - 11.7621) < 0.01 * 11.7621
    assert (tmp_path / "metrics.csv").exists()


def test_medai_rt_import_export_isodose(shared_data, tmp_path):
    rd = shared_data / "rt" / "pydicom" / "rtdose.dcm"
    assert (
        main(
            [
                "rt-import",
                str(rd),
                str(shared_data / "rt" / "pydicom" / "rtplan.dcm"),
                "--output-dir",
                str(tmp_path / "in"),
                "--report",
                str(tmp_path / "i.json"),
            ]
        )
        == 0
    )
    dose_file = tmp_path / "in" / "rtdose.nrrd"
    assert (tmp_path / "in" / "rtplan_beams.csv").exists()
    assert (
        main(["rt-export", str(tmp_path / "out"), "--dose", str(dose_file), "--report", str(tmp_path / "e.json")]) == 0
    )
    assert main(["rt-import", str(tmp_path / "out" / "RTDOSE.dcm"), "--output-dir", str(tmp_path / "back")]) == 0
    a = sitk.ReadImage(str(dose_file))
    b = sitk.ReadImage(str(tmp_path / "back" / "RTDOSE.nrrd"))
    assert np.abs(sitk.GetArrayFromImage(a) - sitk.GetArrayFromImage(b)).max() < 1e-6
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    prostate = shared_data / "rt" / "SlicerRT" / "EclipseProstate_Dose.nrrd"
    assert (
        main(
            [
                "isodose",
                str(prostate),
                str(tmp_path / "iso"),
                "--levels",
                "20,45",
                "--gy",
                "--report",
                str(tmp_path / "iso.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "iso.json").read_text())["metrics"]["surfaces"] == 2


def test_medai_gamma_bad_input_one_line_error(tmp_path, capsys):
    code = main(["gamma", str(tmp_path / "missing.nrrd"), str(tmp_path / "missing2.nrrd")])
    assert code == 1
    assert capsys.readouterr().err.count("\n") == 1


def _write_phantom_plan(tmp_path):
    """A 40x48x44 grid (2.5 x 2 x 3 mm): CT (water cylinder in air), a Gaussian dose, target + OAR labels."""
    shape = (40, 48, 44)  # k, j, i
    kk, jj, ii = np.indices(shape).astype(float)
    spacing = (2.5, 2.0, 3.0)  # i, j, k (mm)
    x, y, z = (ii - 22) * spacing[0], (jj - 24) * spacing[1], (kk - 20) * spacing[2]
    ct = np.where(x**2 + y**2 < 45.0**2, 0.0, -1000.0).astype(np.int16)
    dose = (60.0 * np.exp(-(x**2 + (y - 5) ** 2 + z**2) / (2 * 18.0**2))).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[x**2 + (y - 5) ** 2 + z**2 < 12.0**2] = 1
    labels[(x - 25) ** 2 + y**2 + z**2 < 8.0**2] = 2
    paths = {}
    for name, array in (("ct", ct), ("dose", dose), ("labels", labels)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin((-55.0, -48.0, -60.0))
        paths[name] = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(image, str(paths[name]))
    return paths


def test_medai_dvh_writes_pdf_and_png_plan_reports(tmp_path):
    """``medai dvh ... --report-pdf F.pdf``: a 3-page PDF (summary, axial/coronal/sagittal overlays, DVH) and a PNG."""
    paths = _write_phantom_plan(tmp_path)
    pdf, png, report = tmp_path / "plan.pdf", tmp_path / "plan.png", tmp_path / "dvh.json"
    code = main(
        [
            "dvh",
            str(paths["dose"]),
            str(paths["labels"]),
            "--prescription",
            "50",
            "--target",
            "1",
            "--report-pdf",
            str(pdf),
            "--report-png",
            str(png),
            "--ct",
            str(paths["ct"]),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    data = json.loads(report.read_text())
    assert data["outputs"]["report_pdf"] == str(pdf)
    assert data["outputs"]["report_png"] == str(png)
    raw = pdf.read_bytes()
    assert raw.startswith(b"%PDF-")
    assert raw.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", raw)) == 3
    assert re.search(rb"/Count\s+3\b", raw)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert png.stat().st_size > 10_000
    assert set(data["metrics"]["plan"]) >= {"HI_ICRU83", "CI_Paddick", "GI_Paddick"}


def test_medai_rt_export_plan_round_trip(tmp_path):
    """``medai rt-export OUT --dose D --segmentation S --target T --gantry ...``: RTPLAN + RTSTRUCT + RTDOSE that
    ``medai rt-import`` reads back with the same beam geometry and metersets."""
    from MedAIPlanLib.dicomrt.dicom_rt import read_rtplan

    paths = _write_phantom_plan(tmp_path)
    out, report = tmp_path / "rt", tmp_path / "export.json"
    assert (
        main(
            [
                "rt-export",
                str(out),
                "--dose",
                str(paths["dose"]),
                "--segmentation",
                str(paths["labels"]),
                "--target",
                "1",
                "--gantry",
                "0,90,180,270",
                "--couch",
                "0,0,0,10",
                "--beam-mu",
                "100,110,120,130",
                "--prescription",
                "60",
                "--fractions",
                "30",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    written = json.loads(report.read_text())["outputs"]
    assert set(written) == {"RTDOSE", "RTSTRUCT", "RTPLAN"}
    plan = read_rtplan(written["RTPLAN"])
    assert [b.gantry_deg for b in plan["beams"]] == [0, 90, 180, 270]
    assert [b.couch_deg for b in plan["beams"]] == [0, 0, 0, 10]
    assert [b.meterset_mu for b in plan["beams"]] == [100, 110, 120, 130]
    assert plan["fractions"] == 30
    iso = np.array(plan["beams"][0].isocenter_lps)
    assert np.linalg.norm(iso - [0.0, 5.0, 0.0]) < 1.5  # target centroid (sphere centre, LPS: y = +5 mm)
    assert (
        main(
            [
                "rt-import",
                written["RTPLAN"],
                written["RTSTRUCT"],
                "--output-dir",
                str(tmp_path / "back"),
                "--report",
                str(tmp_path / "import.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "import.json").read_text())["metrics"]
    assert metrics["RTPLAN_beams"] == 4
