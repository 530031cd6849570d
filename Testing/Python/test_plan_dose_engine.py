"""MedAIPlan dose engine: matRad I/O conventions, HLUT, beams, ray tracing, SVD pencil beam vs matRad."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io as sio

from MedAICommonLib.geometry import Geometry
from MedAIPlanLib.dose.beams import make_beams, rotation_matrix
from MedAIPlanLib.dose.dose_influence import compute_dij, dose_to_ct_grid, make_dose_grid
from MedAIPlanLib.dose.hlut import DEFAULT_HLUT, hu_to_density, load_hlut
from MedAIPlanLib.dose.matrad_io import (
    kji_to_matrad_cube,
    load_matrad_patient,
    load_photon_machine,
    mask_to_matrad_indices,
    matrad_cube_to_kji,
    matrad_indices_to_mask,
)
from MedAIPlanLib.dose.raytrace import radiological_depth
from MedAIPlanLib.evaluation.plan_metrics import gamma_pass_rate


def _matrad(shared_data, name):
    return shared_data / "rt" / "matRad" / name


def test_matrad_index_mapping_round_trip():
    dims = (4, 3, 2)  # y, x, z
    cube = np.arange(np.prod(dims)).reshape(dims)
    kji = matrad_cube_to_kji(cube)
    assert kji.shape == (2, 4, 3)
    # cube[y, x, z] == kji[z, y, x]
    assert kji[1, 3, 2] == cube[3, 2, 1]
    assert np.array_equal(kji_to_matrad_cube(kji), cube)
    # MATLAB linear index (1-based, column-major) of (y=2, x=1, z=1) = 1 + 2 + 4*1 + 12*1
    mask = matrad_indices_to_mask([1 + 2 + 4 + 12], dims)
    assert mask[1, 2, 1]
    assert mask.sum() == 1
    assert mask_to_matrad_indices(mask).tolist() == [19]
    with pytest.raises(ValueError, match="outside the CT"):
        matrad_indices_to_mask([10_000], dims)


def test_load_test_patient_geometry(shared_data):
    p = load_matrad_patient(_matrad(shared_data, "photons_testData.mat"))
    # matRad >= 3 world axes: first voxel at -cubeDim/2 * resolution, LPS
    assert p.geometry.space == "LPS"
    assert p.geometry.shape_kji == (10, 20, 10)
    assert np.allclose(p.geometry.origin, (-50, -100, -50))
    target = p.structure("target").mask
    centre = p.geometry.index_to_point(np.argwhere(target)[:, ::-1].astype(float)).mean(0)
    raw = sio.loadmat(_matrad(shared_data, "photons_testData.mat"), squeeze_me=True, struct_as_record=False)
    assert np.allclose(centre, raw["pln"].propStf.isoCenter[0])  # matRad's own isocentre
    assert p.structure("Body").mask.sum() == 1152
    with pytest.raises(ValueError, match="No structure named"):
        p.structure("Liver")


def test_hlut(shared_data, tmp_path):
    t = load_hlut(_matrad(shared_data, "matRad_default.hlut"))
    assert np.allclose(t, DEFAULT_HLUT)
    assert np.allclose(hu_to_density(np.array([-1000, 0, 50, 5000])), [0.001, 1.0, 1.0475, 2.505], atol=1e-6)
    csv = tmp_path / "t.csv"
    csv.write_text("HU,density\n-1000,0\n1000,2\n")
    assert np.isclose(hu_to_density(np.array([0.0]), load_hlut(csv))[0], 1.0)
    csv.write_text("0,1\n-10,0\n")
    with pytest.raises(ValueError, match="increasing"):
        load_hlut(csv)


def test_rotation_and_source_conventions():
    assert np.allclose(rotation_matrix(90) @ [0, -1000, 0], [1000, 0, 0], atol=1e-9)  # from patient left (+x LPS)
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    beams = make_beams(mask, Geometry(shape_kji=(5, 5, 5), space="LPS"), [0, 90], bixel_width=5)
    assert np.allclose(beams[0].source, [2, -998, 2])
    assert np.allclose(beams[1].source, [1002, 2, 2])
    with pytest.raises(ValueError, match="outside the CT"):
        make_beams(mask, Geometry(shape_kji=(5, 5, 5), space="LPS"), [0], isocenter=[100, 0, 0])
    with pytest.raises(ValueError, match="empty"):
        make_beams(np.zeros_like(mask), Geometry(shape_kji=(5, 5, 5), space="LPS"), [0])


def test_radiological_depth_water_slab():
    # water slab from y = 20 mm on, air before; beam along +y
    geo = Geometry(spacing=(2.0, 2.0, 2.0), origin=(-20, -20, -20), space="LPS", shape_kji=(21, 41, 21))
    dens = np.zeros(geo.shape_kji, np.float32)
    dens[:, 20:, :] = 1.0  # j >= 20 -> y >= 20 mm; voxel boundary at y = 19 mm
    rot = rotation_matrix(0)
    source = np.array([0.0, -1000.0, 0.0])
    pts = np.array([[0, 30.0, 0], [0, 50, 0], [10, 40, 4], [0, 0, 0]])
    rd = radiological_depth(dens, geo, source, rot, 1000.0, pts)
    path_in_water = (pts[:, 1] - 19.0) / (pts[:, 1] - source[1]) * np.linalg.norm(pts - source, axis=1)
    assert np.allclose(rd[:3], path_in_water[:3], atol=0.6)
    assert abs(rd[3]) < 0.6


@pytest.fixture(scope="module")
def matrad_case(shared_data):
    root = shared_data
    path = root / "rt" / "matRad" / "photons_testData.mat"
    p = load_matrad_patient(path)
    raw = sio.loadmat(path, squeeze_me=True, struct_as_record=False)
    mach = load_photon_machine(root / "rt" / "matRad" / "photons_Generic.mat")
    return p, raw, mach


def test_pencil_beam_reproduces_matrad_dose(matrad_case):
    p, raw, mach = matrad_case
    pln = raw["pln"]
    beams = make_beams(
        p.structure("Target").mask,
        p.geometry,
        pln.propStf.gantryAngles,
        pln.propStf.couchAngles,
        bixel_width=float(pln.propStf.bixelWidth),
    )
    # the same bixels as matRad's stf
    for beam, stf in zip(beams, raw["stf"]):
        ours = sorted(map(tuple, np.round(beam.ray_pos, 6) + 0.0))
        theirs = sorted(tuple(np.round(np.asarray(r.rayPos_bev, float)[[0, 2]], 6) + 0.0) for r in stf.ray)
        assert ours == theirs
    body = p.structure("Body").mask | p.structure("Target").mask
    dij = compute_dij(
        hu_to_density(p.hu, p.hlut),
        p.geometry,
        beams,
        mach,
        voxel_mask=body,
        lateral_cutoff_mm=float(pln.propDoseCalc.geometricLateralCutOff),
    )
    w = np.asarray(raw["resultGUI"].w, float)
    ours = dij.dose(w)
    ref = matrad_cube_to_kji(raw["resultGUI"].physicalDose)
    rate = gamma_pass_rate(ref, ours, p.geometry.spacing[::-1], 2.0, 2.0, 10.0)
    assert rate >= 98.0, rate
    hot = ref > 0.5 * ref.max()
    assert np.max(np.abs(ours[hot] - ref[hot]) / ref.max()) < 0.01
    # per-beam doses as matRad's
    ref1 = matrad_cube_to_kji(raw["resultGUI"].physicalDose_beam1)
    assert gamma_pass_rate(ref1, dij.beam_dose(w, 0), p.geometry.spacing[::-1]) >= 98.0
    # dij columns agree with matRad's dij in the core (matRad samples the tail randomly)
    ref_dij = raw["dij"].physicalDose.tocsc()
    order = np.argsort(kji_to_matrad_cube(np.arange(ref.size).reshape(ref.shape)).ravel(order="F"))
    col = np.asarray(ref_dij[:, 2].todense()).ravel()[order]  # central bixel of beam 1
    mine = np.asarray(dij.matrix[:, 2].todense()).ravel()
    big = col > 0.1 * col.max()
    assert np.allclose(mine[big], col[big], rtol=0.02)


def test_coarse_dose_grid_interpolates_back(matrad_case):
    p, raw, mach = matrad_case
    beams = make_beams(p.structure("Target").mask, p.geometry, [0, 90], bixel_width=10)
    dens = hu_to_density(p.hu)
    fine = compute_dij(dens, p.geometry, beams, mach)
    coarse = compute_dij(dens, p.geometry, beams, mach, dose_resolution_mm=20.0)
    assert coarse.geometry.shape_kji == make_dose_grid(p.geometry, 20.0).shape_kji == (5, 10, 5)
    w = np.ones(fine.num_bixels)
    f, c = fine.dose(w), coarse.dose(w)
    # the coarse grid shares the first voxel centre: its voxels coincide with every 2nd CT voxel
    assert np.allclose(c, f[::2, ::2, ::2], atol=0.01 * f.max())
    back = dose_to_ct_grid(c, coarse.geometry, p.geometry)
    assert back.shape == f.shape
    assert np.allclose(back[::2, ::2, ::2], c, atol=1e-5)
    mid = back[1:-1:2, 1:-1:2, 1:-1:2]  # halfway voxels: mean of the 8 neighbours
    avg = (
        sum(
            c[a : a + mid.shape[0], b : b + mid.shape[1], d : d + mid.shape[2]]
            for a in (0, 1)
            for b in (0, 1)
            for d in (0, 1)
        )
        / 8
    )
    assert np.allclose(mid, avg, atol=1e-5)


@pytest.mark.parametrize("shift", [(0.0, 0.0, 0.0), (1.1, -0.7, 2.3), (-9.0, 14.0, -30.0)])
def test_dose_back_to_ct_by_axes_equals_trilinear_sampling(shift):
    """The per-axis interpolation back onto the CT equals trilinear sampling at every CT voxel centre
    (oblique, anisotropic grids; a dose grid shifted partly outside the CT gives zeros there)."""
    import torch

    from MedAIPlanLib.dose.beams import voxel_points_lps
    from MedAIPlanLib.dose.raytrace import sample_volume

    rot = np.array([[0.8, -0.6, 0], [0.6, 0.8, 0], [0, 0, 1.0]]) @ np.array(
        [[1, 0, 0], [0, 0.96, -0.28], [0, 0.28, 0.96]]
    )
    ct = Geometry((0.7, 1.3, 2.1), (10.0, -5.0, 3.0), rot, "LPS", (23, 31, 37))
    grid = make_dose_grid(ct, (2.5, 3.0, 4.5))
    dose_geo = Geometry(grid.spacing, tuple(np.array(grid.origin) + rot @ np.array(shift)), rot, "LPS", grid.shape_kji)
    dose = np.random.default_rng(1).random(dose_geo.shape_kji).astype(np.float32)
    fast = dose_to_ct_grid(dose, dose_geo, ct)
    pts = torch.as_tensor(voxel_points_lps(ct), dtype=torch.float64)
    ref = sample_volume(torch.as_tensor(dose, dtype=torch.float64), dose_geo, pts).numpy().reshape(ct.shape_kji)
    np.testing.assert_allclose(fast, ref, atol=2e-6)
    assert (ref == 0).any() == (shift[2] < -5)  # the far shift leaves CT voxels outside the dose grid


def _engine_devices():
    import torch

    return [
        "cpu",
        pytest.param(
            "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
        ),
    ]


@pytest.mark.parametrize("device", _engine_devices())
def test_torch_engine_matches_numba_engine_and_matrad(matrad_case, device):
    """The GPU dose engine (torch), run here on ``device``, gives the numba engine's dose-influence
    matrix and passes the same gamma against matRad's dose."""
    p, raw, mach = matrad_case
    pln = raw["pln"]
    beams = make_beams(
        p.structure("Target").mask,
        p.geometry,
        pln.propStf.gantryAngles,
        pln.propStf.couchAngles,
        bixel_width=float(pln.propStf.bixelWidth),
    )
    body = p.structure("Body").mask | p.structure("Target").mask
    args = (hu_to_density(p.hu, p.hlut), p.geometry, beams, mach)
    kw = {"voxel_mask": body, "lateral_cutoff_mm": float(pln.propDoseCalc.geometricLateralCutOff)}
    numba_dij = compute_dij(*args, **kw, engine="numba")
    torch_dij = compute_dij(*args, **kw, engine="torch", device=device)
    assert torch_dij.matrix.shape == numba_dij.matrix.shape
    diff = abs(torch_dij.matrix - numba_dij.matrix)
    assert diff.max() < 1e-3 * numba_dij.matrix.max()  # float32 torch vs float64 numba geometry
    w = np.asarray(raw["resultGUI"].w, float)
    ref = matrad_cube_to_kji(raw["resultGUI"].physicalDose)
    ours = torch_dij.dose(w)
    assert np.abs(ours - numba_dij.dose(w)).max() < 1e-3 * ref.max()
    assert gamma_pass_rate(ref, ours, p.geometry.spacing[::-1], 2.0, 2.0, 10.0) >= 98.0
    # the torch engine's dij sampling (its own random numbers) keeps the dose: fewer entries, same plan dose
    sampled = compute_dij(*args, **kw, engine="torch", device=device, dij_sampling=True)
    assert sampled.matrix.nnz < torch_dij.matrix.nnz
    assert sampled.dose(w).sum() == pytest.approx(ours.sum(), rel=0.01)
    assert gamma_pass_rate(ref, sampled.dose(w), p.geometry.spacing[::-1], 2.0, 2.0, 10.0) >= 98.0


def test_unknown_or_misplaced_engine_is_refused(matrad_case):
    p, _, mach = matrad_case
    beams = make_beams(p.structure("Target").mask, p.geometry, [0.0], bixel_width=10)
    with pytest.raises(ValueError, match="Unknown dose engine"):
        compute_dij(hu_to_density(p.hu), p.geometry, beams, mach, engine="fast")
    with pytest.raises(ValueError, match="numba dose engine runs on the CPU"):
        compute_dij(hu_to_density(p.hu), p.geometry, beams, mach, engine="numba", device="meta")


def test_depths_right_under_the_skin_and_in_the_first_and_last_slices():
    """Both engines march the same samples (each limits the march to the non-zero density box), so
    depths agree even in the build-up region just under the skin; and voxels in the first and last
    slices of a body cut by the scan's ends get the straight-line integral too (fan rays just past
    the grid see the edge slice, not air: before, their depth came out ~20 % short)."""
    import torch

    from MedAIPlanLib.dose.raytrace import sample_volume

    geo = Geometry(spacing=(3.0, 3.0, 2.5), origin=(-60, -60, -50), space="LPS", shape_kji=(41, 41, 41))
    dens = np.zeros(geo.shape_kji, np.float32)
    kk, jj, ii = np.indices(geo.shape_kji)
    dens[(ii - 20) ** 2 + (jj - 20) ** 2 < 15**2] = 1.0  # a water cylinder through every slice
    rot = rotation_matrix(102.0)
    source = rot @ np.array([0.0, -1000.0, 0.0])
    kji = np.argwhere(dens > 0)[::7]
    edge = np.argwhere(dens[[0, -1]] > 0)[::9] * np.array([40, 1, 1])
    kji = np.concatenate([kji, edge])
    pts = geo.index_to_point(kji[:, ::-1].astype(float))
    a = radiological_depth(dens, geo, source, rot, 1000.0, pts, engine="numba")
    b = radiological_depth(torch.as_tensor(dens), geo, source, rot, 1000.0, pts, engine="torch")
    assert a.min() < 3.0  # voxels just under the skin are included
    np.testing.assert_allclose(b, a, atol=0.01)
    # the straight-line integral of the same trilinear density, finely sampled, for the edge slices
    vol = torch.as_tensor(dens, dtype=torch.float64)
    t = np.linspace(0.0, 1.0, 4001)
    ref = []
    for p in pts[-len(edge) :]:
        seg = source + t[:, None] * (p - source)
        rho = sample_volume(vol, geo, torch.as_tensor(seg)).numpy()
        ref.append(np.trapezoid(rho, dx=np.linalg.norm(p - source) / 4000))
    err = a[-len(edge) :] - np.array(ref)
    assert abs(err.mean()) < 0.2
    assert np.abs(err).max() < 1.5  # (trilinear partial volume at the skin)
