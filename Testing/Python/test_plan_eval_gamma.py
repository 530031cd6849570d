"""Gamma index: SlicerRT's EclipseEnt Day1/Day2 baseline, different grids, CPU/GPU agreement."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedAICommonLib.geometry import Geometry
from MedAICommonLib.notices import MedAIWarning
from MedAIPlanLib.evaluation.gamma import gamma_index, search_offsets


def _read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(np.float32), Geometry.from_sitk(image)


@pytest.fixture
def eclipse_pair(shared_data):
    folder = shared_data / "rt" / "SlicerRT"
    return (
        _read(folder / "EclipseEnt_Dose.nrrd"),
        _read(folder / "EclipseEnt_Dose_Day2.nrrd"),
        _read(folder / "GammaVolume_EclipseEnt_Day1Day2_Baseline.nrrd"),
    )


def test_reproduces_slicerrt_gamma_baseline(eclipse_pair):
    """3 %/3 mm global, 10 % threshold, max gamma 2 (SlicerRT's DoseComparison test), SlicerRT's voxel-lattice
    search (interpolation "none"): same voxels, same pass rate."""
    (ref, ref_geo), (ev, ev_geo), (baseline, _) = eclipse_pair
    with pytest.warns(MedAIWarning, match="coarser than DTA/3"):  # 2.5 mm voxels, DTA 3 mm
        result = gamma_index(ref, ref_geo, ev, ev_geo, 3.0, 3.0, 10.0, local=False, max_gamma=2.0, interpolation="none")
    analysed = baseline > 0
    baseline_rate = 100.0 * np.mean(baseline[analysed] <= 1.0)
    assert result.evaluated_voxels == int(analysed.sum())
    assert abs(result.pass_rate - baseline_rate) <= 0.5
    assert np.nanmax(np.abs(np.nan_to_num(result.gamma) - baseline)) < 1e-3


def test_different_grids_and_local(eclipse_pair):
    """An evaluated dose resampled to a 2 mm grid gives nearly the same interpolated-search pass rate."""
    (ref, ref_geo), (ev, ev_geo), _ = eclipse_pair
    ref, ev = ref[55:75, 35:55, 70:100], ev[55:75, 35:55, 70:100]
    origin = ref_geo.index_to_point(np.array([70.0, 35.0, 55.0]))
    ref_geo = Geometry(ref_geo.spacing, origin, ref_geo.direction, "LPS", ref.shape)
    image = sitk.GetImageFromArray(ev)
    ref_geo.apply_to_sitk(image)
    fine = sitk.Resample(
        image,
        [int(s * 2.5 / 2.0) for s in image.GetSize()],
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (2.0, 2.0, 2.0),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    ev_fine, fine_geo = sitk.GetArrayFromImage(fine), Geometry.from_sitk(fine)
    same = gamma_index(ref, ref_geo, ev, ref_geo, 3.0, 3.0, 10.0, step_mm=1.0)
    other = gamma_index(ref, ref_geo, ev_fine, fine_geo, 3.0, 3.0, 10.0, step_mm=1.0)
    assert abs(same.pass_rate - other.pass_rate) < 2.0
    local = gamma_index(ref, ref_geo, ev, ref_geo, 3.0, 3.0, 10.0, local=True, step_mm=1.0)
    assert local.pass_rate <= same.pass_rate


def test_offsets_sorted_within_radius():
    geo = Geometry((2.5, 2.5, 2.5))
    offsets = search_offsets(3.0, 2.0, geo)
    d = np.linalg.norm(offsets, axis=1)
    assert d[0] == 0.0
    assert np.all(np.diff(d) >= 0)
    assert d.max() <= 6.0 + 1e-9
    assert len(offsets) == int(
        np.sum(np.linalg.norm(np.stack(np.meshgrid(*[np.arange(-2, 3) * 2.5] * 3), -1).reshape(-1, 3), axis=1) <= 6.0)
    )


@pytest.mark.gpu
def test_cuda_matches_cpu(eclipse_pair):
    (ref, ref_geo), (ev, ev_geo), _ = eclipse_pair
    cpu = gamma_index(ref, ref_geo, ev, ev_geo, device="cpu", interpolation="none")
    gpu = gamma_index(ref, ref_geo, ev, ev_geo, device=torch.device("cuda"), interpolation="none")
    assert abs(cpu.pass_rate - gpu.pass_rate) < 0.05
    assert np.nanmax(np.abs(cpu.gamma - gpu.gamma)) < 1e-3
