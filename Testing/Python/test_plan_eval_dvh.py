"""DVH and dose metrics against Nelms' analytical benchmark and SlicerRT's Eclipse/CERR DVH tables."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry
from MedAIPlanLib.dicomrt.dicom_rt import read_rtdose, read_rtstruct
from MedAIPlanLib.evaluation import dose_metrics
from MedAIPlanLib.evaluation.dvh import compute_dvh, contour_samples, dvh_agreement
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

NELMS_COLUMNS = {"Dmin": None, "Dmax": None, "Dmean": None, "D99": 99, "D95": 95, "D5": 5, "D1": 1, "D0.03cc": "cc"}


def _nelms_rows(shared_data, pattern: str):
    base = shared_data / "rt" / "nelms-dvh-benchmark"
    with open(base / "analytical" / "Extracted_Analytical_D_points.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        structure = base / "structures" / f"{row['structure']}.dcm"
        if not structure.exists() or "x" in row["dose_voxel_mm"] or not re.match(pattern, row["structure"]):
            continue
        grid = "AntPost" if row["gradient_direction"].startswith("Z") else "SupInf"
        yield row, structure, base / "dose_grids" / f"Linear_{grid}_{row['dose_voxel_mm']}mm_Aligned.dcm"


def _nelms_row_ok(row, structure, dose_path, cache, target_samples: int = 4_000_000) -> bool:
    if dose_path not in cache:
        cache[dose_path] = read_rtdose(dose_path)
    rd = cache[dose_path]
    roi = next(r for r in read_rtstruct(structure) if r.contours)
    s = contour_samples(roi.contours, rd.dose, rd.geometry, target_samples=target_samples)
    values = {"Dmin": s.dose.min(), "Dmax": s.dose.max(), "Dmean": np.average(s.dose, weights=s.weight)}
    for key, p in NELMS_COLUMNS.items():
        if p == "cc":
            values[key] = dose_metrics.dose_at_volume_cc(s, 0.03)
        elif p is not None:
            values[key] = dose_metrics.dose_at_volume_percent(s, p)
    ok = all(
        abs(values[k] - float(row[f"{k}_cGy"]) / 100) <= 0.01 * float(row[f"{k}_cGy"]) / 100 for k in NELMS_COLUMNS
    )
    if row["total_volume_cc"]:
        ok &= abs(s.volume_cc - float(row["total_volume_cc"])) <= 0.01 * float(row["total_volume_cc"])
    return bool(ok)


def test_nelms_axial_cylinders_and_cones_fast(shared_data):
    """Cylinders and cones contoured along SI (2 mm set): every D-value within 1 % of the analytical one."""
    cache = {}
    results = [_nelms_row_ok(*args, cache, 1_000_000) for args in _nelms_rows(shared_data, r"(Cylinder|Cone)_20_0$")]
    assert len(results) == 4
    assert all(results)


def test_nelms_sphere_and_rotated_cylinder_fast(shared_data):
    """Sphere, cylinder and cone lying across the slices (2 mm set): the poles follow the true surface."""
    cache = {}
    results = [
        _nelms_row_ok(*args, cache, 1_000_000) for args in _nelms_rows(shared_data, r"(Sphere|RtCylinder|RtCone)_20_0$")
    ]
    assert len(results) == 6
    assert all(results)


def test_sphere_from_coarse_contours_keeps_its_volume():
    """Circles every 3 mm of a 9 mm sphere (poles = tiny squares): volume and D-values of the true sphere.

    A linear (or cubic) blend of the planes' signed distances cuts the domes near the poles into cones
    (-1.8 % volume here); the power field r^2 - rho^2 is quadratic along z, so the blend is exact.
    """
    r, zs = 9.0, np.arange(-9.0, 9.01, 3.0)
    contours = []
    for z in zs:
        rz = np.sqrt(max(r * r - z * z, 0.0))
        if rz < 0.2:
            c = 0.1 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
        else:
            t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
            c = rz * np.column_stack([np.cos(t), np.sin(t)])
        contours.append(np.column_stack([c, np.full(len(c), z)]))
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(-15.0, -15.0, -15.0), space="LPS", shape_kji=(31, 31, 31))
    dose = np.broadcast_to((np.arange(31) - 15.0 + 20.0)[:, None, None], (31, 31, 31)).astype(float)  # z + 20 Gy
    s = contour_samples(contours, dose, geometry, target_samples=1_000_000)
    exact = 4.0 / 3.0 * np.pi * r**3 / 1000.0
    assert abs(s.volume_cc - exact) <= 0.01 * exact
    # D99 of a sphere in a linear gradient: height h of the bottom cap holding 1 % of the volume
    h = next(h for h in np.linspace(0, r, 100001) if np.pi * h * h * (3 * r - h) / 3 >= 0.01 * exact * 1000)
    assert abs(dose_metrics.dose_at_volume_percent(s, 99) - (20.0 - r + h)) <= 0.01 * (20.0 - r + h)
    assert abs(np.average(s.dose, weights=s.weight) - 20.0) < 0.02


@pytest.mark.slow
def test_nelms_all_rows(shared_data):
    """All rows with data here (60): the issue's target, >= 95 % of rows (58/60 here, bench/README.md)."""
    cache = {}
    axial = [_nelms_row_ok(*a, cache) for a in _nelms_rows(shared_data, r"(Cylinder|Cone|Sphere)_")]
    assert all(axial)
    everything = [_nelms_row_ok(*a, cache) for a in _nelms_rows(shared_data, r".*")]
    assert len(everything) == 60
    assert np.mean(everything) >= 0.95


def _slicerrt_contours(folder, case):
    structures = {}
    for path in sorted((folder / f"{case}_Structures.seg").glob("*.vtp")):
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        poly = reader.GetOutput()
        name = poly.GetFieldData().GetAbstractArray("Segment_Name").GetValue(0)
        points = vtk_to_numpy(poly.GetPoints().GetData()) * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
        offsets = vtk_to_numpy(poly.GetLines().GetOffsetsArray())
        conn = vtk_to_numpy(poly.GetLines().GetConnectivityArray())
        structures[re.sub(r"[^a-z0-9]", "", name.lower())] = [
            points[conn[a:b]] for a, b in zip(offsets[:-1], offsets[1:])
        ]
    return structures


@pytest.mark.parametrize("case", ["EclipseProstate", pytest.param("EclipseEnt", marks=pytest.mark.slow)])
def test_slicerrt_eclipse_and_cerr_tables(shared_data, case):
    """>= 95 % of Eclipse's and CERR's DVH points agree within 1 % volume / 1 % of max dose (BODY is slow-only)."""
    folder = shared_data / "rt" / "SlicerRT"
    image = sitk.ReadImage(str(folder / f"{case}_Dose.nrrd"))
    dose, geometry = sitk.GetArrayFromImage(image), Geometry.from_sitk(image)
    structures = _slicerrt_contours(folder, case)
    for tps in ("Eclipse", "CERR"):
        with open(folder / f"{case}_DvhTable_{tps}.csv") as handle:
            rows = list(csv.reader(handle))
        header, data = rows[0], rows[1:]
        passed = total = 0
        for c in range(0, len(header) - 1, 2):
            key = re.sub(r"[^a-z0-9]", "", header[c].split("_DvhArray")[0].lower())
            if key == "body" and case == "EclipseProstate":
                continue  # 10 L body: ~25 s, covered by the ENT (slow) case
            ref_dose = np.array([float(r[c]) for r in data if r[c]])
            ref_volume = np.array([float(r[c + 1]) for r in data if r[c + 1]])
            curve = compute_dvh(contour_samples(structures[key], dose, geometry, target_samples=500_000), 0.01)
            agree = dvh_agreement(ref_dose, ref_volume, curve, float(dose.max()))
            passed += agree * len(ref_dose)
            total += len(ref_dose)
        assert passed / total >= 95.0, (tps, passed / total)


def test_logic_dvh_tables_on_planar_contour_segmentation(scene, shared_data):
    """The Logic reads the segmentation's planar contours: volume as CERR's, tables and chart as SlicerRT."""
    folder = shared_data / "rt" / "SlicerRT"
    dose = bridge.load_volume(scene, folder / "EclipseProstate_Dose.nrrd")
    seg = bridge.load_segmentation(scene, folder / "EclipseProstate_Structures.seg.vtm")
    result = PlanEvaluationLogic(scene).compute_dvh(
        dose, seg, ["PTV", "Rectum"], v_doses_gy=(40.0,), prescription_gy=45.0, target_segment="PTV"
    )
    assert abs(result.metrics["PTV"]["volume_cc"] - 49.2143) < 0.01 * 49.2143  # CERR's PTV volume
    assert set(result.tables) == {"PTV", "Rectum"}
    cols = bridge.columns_from_table(result.metrics_table)
    assert cols["Structure"] == ["PTV", "Rectum"]
    assert 0 < result.metrics["plan"]["HI_ICRU83"] < 0.2
    assert result.chart.GetNumberOfPlotSeriesNodes() == 2
    with pytest.raises(ValueError, match="not found"):
        PlanEvaluationLogic(scene).compute_dvh(dose, seg, ["Heart"])


def test_structure_off_the_dose_grid_is_flagged_not_sampled(scene):
    """A structure that never touches the dose grid: a warning and outside_dose_grid, the others as usual."""
    from MedAICommonLib.bridge.segmentations import SegmentInfo
    from MedAICommonLib.notices import MedAIWarning

    dose_geometry = Geometry((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "RAS", (20, 20, 20))
    z = np.arange(20, dtype=np.float32)[:, None, None] * 2.0
    dose = bridge.create_volume(scene, np.broadcast_to(z + 10.0, (20, 20, 20)).copy(), dose_geometry, "dose")
    labels = np.zeros((60, 20, 20), np.uint16)
    labels[5:10, 5:10, 5:10] = 1  # z 10-18 mm: inside the dose grid
    labels[50:55, 5:10, 5:10] = 2  # z 100-108 mm: beyond its 0-38 mm
    seg = bridge.create_segmentation(
        scene,
        labels,
        Geometry((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "RAS", labels.shape),
        [SegmentInfo(1, "near"), SegmentInfo(2, "far")],
        "structures",
    )
    with pytest.warns(MedAIWarning, match="'far' lies entirely outside the dose grid"):
        result = PlanEvaluationLogic(scene).compute_dvh(dose, seg)
    assert result.metrics["far"]["outside_dose_grid"] is True
    assert result.metrics["far"]["volume_cc"] == 0.0
    near = result.metrics["near"]
    assert near["outside_dose_grid"] is False
    assert near["volume_cc"] == pytest.approx(0.125 * 8.0)
    assert near["Dmean_Gy"] == pytest.approx(10.0 + 14.0)  # voxel centres z 10..18 mm on the dose grid
