"""Plan reports on the pyRadPlan TG119 patient: the CT comes from the .mat, structures are outlined, every page
is one size."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAIPlanLib.dose.matrad_io import load_matrad_patient
from MedAIPlanLib.evaluation.plan_report import pdf_page_figures
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic
from MedAIPlanLib.logic import MedAIPlanLogic
from MedAIPlanLib.plan_report_nodes import dvh_curves, load_report_ct, plan_report_from_nodes


@pytest.fixture
def tg119_files(scene, shared_data, tmp_path):
    """TG119's structures as .seg.nrrd and a 50 Gy Gaussian dose (sigma 30 mm) on a 6 x 6 x 5 mm LPS grid around
    OuterTarget's centroid, as files; and the .mat path."""
    mat = shared_data / "rt" / "pyRadPlan" / "TG119.mat"
    if not mat.exists():
        pytest.skip(f"{mat} missing")
    _, seg = MedAIPlanLogic(scene).load_matrad(mat)
    seg_path = bridge.save_node(seg, tmp_path / "tg119.seg.nrrd")
    patient = load_matrad_patient(mat)
    target = patient.structure("OuterTarget").mask
    centre = patient.geometry.index_to_point(np.argwhere(target).mean(axis=0)[::-1][None])[0]
    shape_kji = (65, 84, 84)
    origin = np.asarray(patient.geometry.origin)
    kk, jj, ii = np.indices(shape_kji)
    points = origin + np.stack([ii, jj, kk], -1) * np.array([6.0, 6.0, 5.0])
    dose = 50.0 * np.exp(-((points - centre) ** 2).sum(-1) / (2 * 30.0**2))
    image = sitk.GetImageFromArray(dose.astype(np.float32))
    image.SetSpacing((6.0, 6.0, 5.0))
    image.SetOrigin(tuple(origin))
    dose_path = tmp_path / "dose.nrrd"
    sitk.WriteImage(image, str(dose_path))
    return mat, seg_path, dose_path


@pytest.mark.slow  # a full DVH report on the TG119 CT (about 5 s)
def test_medai_dvh_report_shows_the_matrad_ct(tg119_files, tmp_path):
    """``medai dvh DOSE SEG --ct TG119.mat --report-pdf``: three pages, every /MediaBox A4 landscape."""
    mat, seg_path, dose_path = tg119_files
    pdf, png, report = tmp_path / "r.pdf", tmp_path / "r.png", tmp_path / "r.json"
    assert (
        main(
            [
                "dvh",
                str(dose_path),
                str(seg_path),
                "--ct",
                str(mat),
                "--target",
                "OuterTarget",
                "--prescription",
                "50",
                "--report-pdf",
                str(pdf),
                "--report-png",
                str(png),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["outputs"]["report_pdf"] == str(pdf)
    boxes = re.findall(rb"/MediaBox\s*\[([^\]]*)\]", pdf.read_bytes())
    assert len(boxes) == 3
    assert len(set(boxes)) == 1
    width, height = (float(v) for v in boxes[0].split()[2:])
    assert abs(width - 841.9) < 1
    assert abs(height - 595.3) < 1
    assert png.read_bytes().startswith(b"\x89PNG")


def test_report_pages_outline_structures_on_the_matrad_ct(scene, tg119_files):
    """The dose page: a Gy colour bar per plane, a legend naming TG119's structures and the isodose levels in Gy
    and %, the CT from the .mat lined up with BODY (water, about 0 HU, inside it; air outside); the DVH page's
    lines are the computed cumulative DVHs."""
    import matplotlib.pyplot as plt

    mat, seg_path, dose_path = tg119_files
    dose = bridge.load_volume(scene, dose_path)
    seg = bridge.load_segmentation(scene, seg_path)
    ct = load_report_ct(scene, mat)
    result = PlanEvaluationLogic(scene).compute_dvh(
        dose, seg, prescription_gy=50.0, target_segment="OuterTarget", oversampling=1
    )
    report = plan_report_from_nodes(
        dose,
        result,
        ct_node=ct,
        structures_node=seg,
        target="OuterTarget",
        prescription_gy=50.0,
        isodose_levels_gy=(25.0, 47.5),
    )
    summary, planes, dvh_page = pdf_page_figures(report)
    assert [a.get_ylabel() for a in planes.axes if hasattr(a, "_colorbar")] == ["Dose (Gy)"] * 3
    legend = {t.get_text() for a in planes.axes if a.get_legend() for t in a.get_legend().get_texts()}
    assert legend == {"Core", "OuterTarget", "BODY", "25.0 Gy (50%)", "47.5 Gy (95%)"}
    axial = planes.axes[0]
    shown_ct = np.asarray(axial.get_images()[0].get_array())
    body = report.structures["BODY"][report.slice_index("axial")]  # an identity LPS grid is shown unflipped
    assert abs(float(np.median(shown_ct[body]))) < 100
    assert float(np.median(shown_ct[~body])) < -500
    lines = {line.get_label(): line.get_data() for line in dvh_page.axes[0].get_lines()}
    for name, (gy, percent) in dvh_curves(result).items():
        np.testing.assert_allclose(lines[name][0], gy)
        np.testing.assert_allclose(lines[name][1], percent)
    for fig in (summary, planes, dvh_page):
        plt.close(fig)


def test_medai_dose_writes_the_matrad_ct(shared_data, tmp_path):
    """``medai dose --matrad TG119.mat --output-ct CT.nrrd``: the HU cube of the .mat (stored as whole HU), on its
    LPS grid."""
    mat = shared_data / "rt" / "pyRadPlan" / "TG119.mat"
    if not mat.exists():
        pytest.skip(f"{mat} missing")
    ct_path, report = tmp_path / "ct.nrrd", tmp_path / "dose.json"
    assert (
        main(
            [
                "dose",
                "--matrad",
                str(mat),
                "--target",
                "OuterTarget",
                "--gantry-angles",
                "0",
                "--bixel-width",
                "20",
                "--dose-grid",
                "8",
                "--output-dose",
                str(tmp_path / "d.nrrd"),
                "--output-ct",
                str(ct_path),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["outputs"]["ct"] == str(ct_path)
    patient = load_matrad_patient(mat)
    image = sitk.ReadImage(str(ct_path))
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), patient.hu, atol=1.0)
    np.testing.assert_allclose(image.GetOrigin(), patient.geometry.origin)
    np.testing.assert_allclose(image.GetSpacing(), patient.geometry.spacing)
