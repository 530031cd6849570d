"""One plan, one set of dose statistics: ``medai plan`` and ``medai dvh`` on its own dose and segmentation agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MedAICommonLib.cli.main import main
from MedAIPlanLib.evaluation import dvh
from MedAIPlanLib.evaluation.dose_metrics import mask_metrics, structure_metrics


@pytest.fixture
def _machine(monkeypatch, shared_data):
    """The photon base data shipped with the module, else the shared data folder's."""
    import MedAIPlanLib

    if not (Path(MedAIPlanLib.__file__).resolve().parents[1] / "Resources" / "photons_Generic.mat").is_file():
        monkeypatch.setenv("MEDAI_PHOTON_MACHINE", str(shared_data / "rt" / "matRad" / "photons_Generic.mat"))


@pytest.mark.usefixtures("_machine")
def test_plan_and_dvh_report_the_same_target_statistics(shared_data, tmp_path):
    """matRad's test phantom planned to 60 Gy: the plan's D95/Dmean/D2/Dmax are the dvh command's, to the µGy
    (before, the plan took nearest-rank voxel values and the dvh command sub-voxel samples: two D95s).
    On the plan's own grid each voxel is one sample, so the mean is the mean voxel dose the plan optimised."""
    path = shared_data / "rt" / "matRad" / "photons_testData.mat"
    plan_report, dvh_report = tmp_path / "plan.json", tmp_path / "dvh.json"
    dose, seg = tmp_path / "dose.nrrd", tmp_path / "structures.seg.nrrd"
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
                "--fractions",
                "30",
                "--gantry-angles",
                "0,90,180,270",
                "--bixel-width",
                "10",
                "--dose-grid",
                "10",
                "--output-dose",
                str(dose),
                "--output-segmentation",
                str(seg),
                "--report",
                str(plan_report),
            ]
        )
        == 0
    )
    assert main(["dvh", str(dose), str(seg), "--report", str(dvh_report)]) == 0
    planned = json.loads(plan_report.read_text())["metrics"]["structures"]
    evaluated = json.loads(dvh_report.read_text())["metrics"]["structures"]
    assert set(planned) == set(evaluated)
    for name, m in planned.items():
        for key in ("volume_cc", "Dmean_Gy", "D95_Gy", "D2_Gy", "Dmax_Gy"):
            assert m[key] == pytest.approx(evaluated[name][key], abs=1e-6), (name, key)
    target = planned["Target"]
    assert 0.95 * 60.0 < target["D95_Gy"] < target["Dmean_Gy"] < target["D2_Gy"] <= target["Dmax_point_Gy"]


def test_mask_on_a_cropped_grid_gives_the_same_samples():
    """A mask saved on a whole-voxel crop of the dose grid samples the dose at the same points (no mm round trip)."""
    from MedAICommonLib.geometry import Geometry

    rng = np.random.default_rng(3)
    dose = rng.uniform(0.0, 60.0, (20, 24, 28))
    geometry = Geometry((1.2, 0.9, 2.5), (-10.3, 20.7, 5.1), np.eye(3), "LPS", dose.shape)
    mask = np.zeros(dose.shape, bool)
    mask[4:15, 6:20, 3:17] = rng.random((11, 14, 14)) > 0.3
    crop = mask[4:15, 6:20, 3:17]
    crop_geometry = Geometry(
        geometry.spacing, geometry.index_to_point(np.array([3.0, 6.0, 4.0])), np.eye(3), "LPS", crop.shape
    )
    whole = dvh.mask_samples(dose, geometry, mask, geometry)
    cropped = dvh.mask_samples(dose, geometry, crop, crop_geometry)
    assert np.array_equal(whole.dose, cropped.dose)
    # on its own grid a voxel is one sample at its centre: the voxel doses themselves
    assert np.array_equal(np.sort(whole.dose), np.sort(dose[mask]))
    assert whole.volume_cc == pytest.approx(mask.sum() * np.prod(geometry.spacing) / 1000.0)
    m = mask_metrics(dose, geometry, crop, crop_geometry)
    assert m["Dmean_Gy"] == pytest.approx(dose[mask].mean())
    assert m["D50_Gy"] == pytest.approx(np.median(dose[mask]), abs=0.2)
    assert structure_metrics(whole) == m
    # on a finer grid the mask is oversampled, the dose interpolated between voxel centres
    fine = Geometry(
        (0.6, 0.45, 1.25), geometry.index_to_point(np.array([-0.25, -0.25, -0.25])), np.eye(3), "LPS", (40, 48, 56)
    )
    oversampled = dvh.mask_samples(dose, geometry, np.ones((40, 48, 56), bool), fine, oversampling=2)
    assert len(oversampled.dose) == 8 * 40 * 48 * 56
    assert oversampled.volume_cc == pytest.approx(np.prod(dose.shape) * np.prod(geometry.spacing) / 1000.0)
    budget = dvh.mask_samples(dose, geometry, np.ones((40, 48, 56), bool), fine, oversampling=2, max_samples=200_000)
    assert len(budget.dose) == 40 * 48 * 56  # over the sample budget: one sample per voxel
