"""Plan-evaluation scenarios shared by pytest and the Slicer self-test; each builds its own data.

Every scenario takes a scene, runs :class:`PlanEvaluationLogic` and asserts numbers a physicist
would check against analytic values.
"""

from __future__ import annotations

import tempfile

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import Geometry

from MedAIPlanLib.evaluation.dose_volume import is_dose_volume, mark_as_dose_volume
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

GEOMETRY = Geometry((2.0, 2.0, 2.0), (-40.0, -40.0, -40.0), np.eye(3), "RAS", (41, 41, 41))


def _points(geometry: Geometry) -> np.ndarray:
    kk, jj, ii = np.indices(geometry.shape_kji)
    return geometry.index_to_point(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)).reshape(
        (*geometry.shape_kji, 3)
    )


def _gaussian_dose(shift_mm=(0.0, 0.0, 0.0), peak=60.0, sigma=15.0) -> np.ndarray:
    p = _points(GEOMETRY) - np.asarray(shift_mm)
    return (peak * np.exp(-(p**2).sum(axis=-1) / (2 * sigma**2))).astype(np.float32)


def scenario_dvh_linear_gradient(scene) -> dict:
    """A 20 x 20 x 20 mm box in a dose rising 1 Gy/mm along S: D-values follow the uniform z distribution."""
    z = _points(GEOMETRY)[..., 2]
    dose = mark_as_dose_volume(bridge.create_volume(scene, (z + 50.0).astype(np.float32), GEOMETRY, "gradient dose"))
    # The box on a 1 mm grid (not the 2 mm dose grid), so the DVH samples it as a structure, not as dose voxels.
    fine = Geometry((1.0, 1.0, 1.0), (-40.5, -40.5, -40.5), np.eye(3), "RAS", (82, 82, 82))
    labels = np.zeros(fine.shape_kji, np.uint16)
    labels[30:50, 30:50, 30:50] = 1  # voxel edges -11..9 mm
    seg = bridge.create_segmentation(scene, labels, fine, [SegmentInfo(1, "box")], "box structures")
    result = PlanEvaluationLogic(scene).compute_dvh(dose, seg, v_doses_gy=(49.0,), bin_width_gy=0.01)
    m = result.metrics["box"]
    z0, z1 = -11.0 + 50.0, 9.0 + 50.0  # dose at the box's lower / upper faces
    assert abs(m["volume_cc"] - 8.0) < 1e-6, m["volume_cc"]
    assert abs(m["Dmean_Gy"] - (z0 + z1) / 2) < 0.01, m["Dmean_Gy"]
    for p in (98, 95, 50, 2):
        expected = z1 - p / 100.0 * (z1 - z0)
        assert abs(m[f"D{p}_Gy"] - expected) < 0.01 * expected, (p, m[f"D{p}_Gy"], expected)
    assert abs(m["V49Gy_percent"] - 50.0) < 1.0, m["V49Gy_percent"]
    assert len(result.tables) == 1
    assert result.chart.GetNumberOfPlotSeriesNodes() == 1
    return m


def scenario_gamma_shifted_dose(scene) -> dict:
    """A Gaussian dose shifted by 2 mm passes 3 %/3 mm everywhere, fails partly at 1 %/1 mm; identical doses give 0."""
    ref = mark_as_dose_volume(bridge.create_volume(scene, _gaussian_dose(), GEOMETRY, "reference dose"))
    ev = mark_as_dose_volume(bridge.create_volume(scene, _gaussian_dose((2.0, 0.0, 0.0)), GEOMETRY, "shifted dose"))
    logic = PlanEvaluationLogic(scene)
    node, loose = logic.gamma(ref, ev, 3.0, 3.0, 10.0, device="cpu")
    _, strict = logic.gamma(ref, ev, 1.0, 1.0, 10.0, device="cpu", step_mm=0.5)
    _, same = logic.gamma(ref, ref, 3.0, 3.0, 10.0, device="cpu")
    assert loose.pass_rate == 100.0, loose.pass_rate
    assert strict.pass_rate < 90.0, strict.pass_rate
    assert same.pass_rate == 100.0
    assert same.max_gamma_found < 1e-6
    assert node.GetAttribute("DoseComparison.GammaVolume") == "1"
    gamma, _ = bridge.array_from_volume(node)
    assert gamma.max() <= 2.0
    assert (gamma[_gaussian_dose() < 6.0] == 0).all()
    return {"loose": loose.pass_rate, "strict": strict.pass_rate}


def scenario_rt_round_trip(scene) -> dict:
    """Dose and structures written as RTDOSE/RTSTRUCT and read back keep values, geometry and volumes."""
    dose_array = _gaussian_dose()
    dose = mark_as_dose_volume(bridge.create_volume(scene, dose_array, GEOMETRY, "plan dose"))
    p = _points(GEOMETRY)
    labels = np.zeros(GEOMETRY.shape_kji, np.uint16)
    labels[(p**2).sum(axis=-1) < 15.0**2] = 1
    labels[(np.abs(p - (20.0, 0.0, 0.0)) < 6.0).all(axis=-1)] = 2
    seg = bridge.create_segmentation(
        scene, labels, GEOMETRY, [SegmentInfo(1, "PTV"), SegmentInfo(2, "OAR")], "plan structures"
    )
    logic = PlanEvaluationLogic(scene)
    with tempfile.TemporaryDirectory() as folder:
        paths = logic.export_rt(folder, dose, seg)
        dose2 = logic.import_rtdose(paths["RTDOSE"])
        seg2 = logic.import_rtstruct(paths["RTSTRUCT"], reference_node=dose2)
    arr2, geo2 = bridge.array_from_volume(dose2)
    scaling = float(dose2.GetAttribute("DicomRtImport.DoseUnitValue"))
    assert is_dose_volume(dose2)
    assert geo2.same_grid(GEOMETRY, 1e-3)
    assert np.abs(arr2 - dose_array).max() <= scaling * 0.5 + 1e-6 * dose_array.max()
    out = {}
    for value, name in ((1, "PTV"), (2, "OAR")):
        mask, _ = bridge.segment_mask(seg2, name, GEOMETRY)
        before, after = int((labels == value).sum()), int(mask.sum())
        assert abs(after - before) <= 0.02 * before, (name, before, after)
        out[name] = (before, after)
    return out


def scenario_isodose_sphere(scene) -> dict:
    """The 50 % isodose surface of a Gaussian encloses the analytic sphere volume (within 3 %)."""
    dose = mark_as_dose_volume(bridge.create_volume(scene, _gaussian_dose(), GEOMETRY, "gauss dose"))
    from MedAIPlanLib.evaluation.isodose import enclosed_volume_cc

    models, legend, levels = PlanEvaluationLogic(scene).isodose(dose, (50.0,), 60.0)
    radius = 15.0 * np.sqrt(2 * np.log(2.0))
    expected = 4.0 / 3.0 * np.pi * radius**3 / 1000.0
    volume = enclosed_volume_cc(bridge.polydata_from_model(models[0]))
    assert abs(volume - expected) < 0.03 * expected, (volume, expected)
    assert bridge.columns_from_table(legend)["Dose (Gy)"] == [30.0]
    return {"volume_cc": volume, "expected_cc": expected}
