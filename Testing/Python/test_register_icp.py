"""ICP: the Stanford bunny's 90-degree scan onto the 0-degree scan, against the scanner's poses."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from MedAIRegisterLib.pointsets.icp import icp, rotation_angle_deg


def read_ascii_ply(path) -> np.ndarray:
    """Vertices of an ASCII PLY file (the bunny scans), in the file's units."""
    header_lines, count = 0, 0
    with open(path) as handle:
        for line in handle:
            header_lines += 1
            if line.startswith("element vertex"):
                count = int(line.split()[2])
            if line.startswith("end_header"):
                break
    return np.loadtxt(path, skiprows=header_lines, max_rows=count, usecols=(0, 1, 2))


def bunny_pose_mm(folder, scan: str) -> np.ndarray:
    """4x4 scan -> common-frame matrix in mm from bun.conf: p_common = R(q)^T p_scan + t (SOURCE.md)."""
    for line in (folder / "bun.conf").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "bmesh" and parts[1] == scan:
            values = np.array(parts[2:], dtype=float)
            matrix = np.eye(4)
            matrix[:3, :3] = Rotation.from_quat(values[3:]).as_matrix().T
            matrix[:3, 3] = values[:3] * 1000.0
            return matrix
    raise KeyError(scan)


def bunny_pair(shared_data):
    folder = shared_data / "pointsets" / "stanford-bunny"
    fixed = read_ascii_ply(folder / "bun000.ply") * 1000.0
    moving = read_ascii_ply(folder / "bun090.ply") * 1000.0
    truth = np.linalg.inv(bunny_pose_mm(folder, "bun000.ply")) @ bunny_pose_mm(folder, "bun090.ply")
    return fixed, moving, truth


def pose_errors(matrix, truth, points):
    """Rotation error (deg) and mean displacement error (mm) over ``points``."""
    mapped = points @ matrix[:3, :3].T + matrix[:3, 3]
    expected = points @ truth[:3, :3].T + truth[:3, 3]
    return rotation_angle_deg(matrix @ np.linalg.inv(truth)), float(np.linalg.norm(mapped - expected, axis=1).mean())


def test_bun090_onto_bun000_recovers_scanner_pose(shared_data):
    fixed, moving, truth = bunny_pair(shared_data)
    assert rotation_angle_deg(truth) > 85  # a 90-degree turn: plain ICP from identity cannot do this
    result = icp(fixed, moving)  # defaults: point-to-plane, sphere starts, trim auto
    rotation_error, translation_error = pose_errors(result.matrix, truth, moving)
    assert result.reliable
    assert result.converged
    assert 0.3 < result.trim_fraction < 0.7  # auto trim: the measured overlap
    assert rotation_error < 1.0
    assert translation_error < 1.0
    assert result.rms_mm < 1.0
    assert 0.2 < result.inlier_fraction < 0.9  # partial overlap
    assert result.iterations >= 1


def test_point_to_point_similarity_and_affine_on_known_transform():
    rng = np.random.default_rng(7)
    # A closed, asymmetric surface: points on an ellipsoid with a bump, sampled densely.
    u = rng.normal(size=(6000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    fixed = u * [40.0, 25.0, 15.0] + 8.0 * np.exp(-np.sum((u - [0.6, 0.6, 0.5]) ** 2, axis=1) * 6)[:, None] * u
    truth = np.eye(4)
    truth[:3, :3] = 1.1 * Rotation.from_euler("xyz", [10, -15, 20], degrees=True).as_matrix()
    truth[:3, 3] = [5.0, -8.0, 12.0]
    moving = (fixed[:4000] - truth[:3, 3]) @ np.linalg.inv(truth[:3, :3]).T  # so truth maps moving -> fixed
    for metric in ("point-to-point", "point-to-plane"):
        result = icp(fixed, moving, metric=metric, transform="similarity", trim_fraction=1.0, multi_start="axes")
        rotation_error, translation_error = pose_errors(result.matrix, truth, moving)
        assert rotation_error < 0.5, metric
        assert translation_error < 0.5, metric
        assert np.cbrt(np.linalg.det(result.matrix[:3, :3])) == pytest.approx(1.1, abs=0.01)
    affine = icp(fixed, moving, transform="affine", trim_fraction=1.0, initial=truth @ _small_offset())
    assert pose_errors(affine.matrix, truth, moving)[1] < 0.5


def _small_offset():
    offset = np.eye(4)
    offset[:3, :3] = Rotation.from_euler("z", 3, degrees=True).as_matrix()
    offset[:3, 3] = [1.0, 0.5, -1.0]
    return offset


def _icp_command(folder, tmp_path, *options):
    """Run `medai icp bun000.ply bun090.ply OPTIONS`; returns (ITK transform, report)."""
    import json

    import SimpleITK as sitk

    from MedAICommonLib.cli.main import main

    out, report = tmp_path / "bunny.h5", tmp_path / "bunny.json"
    assert (
        main(
            [
                "icp",
                str(folder / "bun000.ply"),
                str(folder / "bun090.ply"),
                "--output-transform",
                str(out),
                "--report",
                str(report),
                *options,
            ]
        )
        == 0
    )
    return sitk.ReadTransform(str(out)), json.loads(report.read_text())


def test_icp_command_defaults_recover_the_scanner_pose_in_mm(shared_data, tmp_path):
    """`medai icp bun000.ply bun090.ply` with DEFAULT options (files in metres, read as LPS like Slicer does):
    the file holds ITK's fixed -> moving transform, the inverse of the scanner pose that maps bun090 onto
    bun000, within 2 degrees and 1 mm; the report's RMS is in mm and says the files were read as metres."""
    folder = shared_data / "pointsets" / "stanford-bunny"
    itk, report = _icp_command(folder, tmp_path)
    _, moving_mm, truth = bunny_pair(shared_data)
    matrix_lps = np.eye(4)
    matrix_lps[:3, :3] = np.reshape(itk.GetMatrix(), (3, 3))
    matrix_lps[:3, 3] = (
        np.asarray(itk.GetTranslation())
        + np.asarray(itk.GetCenter())
        - matrix_lps[:3, :3] @ np.asarray(itk.GetCenter())
    )
    assert rotation_angle_deg(matrix_lps @ truth) < 2.0  # fixed -> moving composed with moving -> fixed
    moving = moving_mm[::50] / 1000.0
    on_fixed = moving @ truth[:3, :3].T + truth[:3, 3] / 1000.0
    back = np.array([itk.TransformPoint(tuple(p)) for p in on_fixed])
    assert np.linalg.norm(back - moving, axis=1).mean() * 1000.0 < 1.0  # mm
    metrics = report["metrics"]
    assert metrics["converged"] is True
    assert metrics["units"] == "m"
    assert 0.1 < metrics["rms_mm"] < 1.0  # mm: the scans' spacing is ~0.5 mm (in metres it would read 0.0005)
    assert 0.3 < metrics["inlier_fraction"] < 0.7  # partial overlap, measured
    assert any("metres" in warning for warning in report["warnings"])


@pytest.mark.slow  # ICP from 192 starts end to end (about 8 s)
def test_icp_command_flags_a_pose_it_did_not_find(shared_data, tmp_path):
    """Principal-axes starts with 90% of the pairs cannot turn bun090 onto bun000 (about half of each scan
    is out of the other's view): the command must not claim convergence and must say why."""
    folder = shared_data / "pointsets" / "stanford-bunny"
    itk, report = _icp_command(folder, tmp_path, "--multi-start", "axes", "--trim", "0.9", "--units", "m")
    _, _, truth = bunny_pair(shared_data)
    matrix_lps = np.eye(4)
    matrix_lps[:3, :3] = np.reshape(itk.GetMatrix(), (3, 3))
    assert rotation_angle_deg(matrix_lps @ truth) > 10.0  # really wrong, so the flag below is deserved
    assert report["metrics"]["converged"] is False
    assert report["metrics"]["reliable"] is False
    assert any("unreliable" in warning for warning in report["warnings"])
    assert not any("metres" in warning for warning in report["warnings"])  # --units m: nothing guessed


@pytest.mark.slow  # ICP from 192 starts end to end (about 8 s)
def test_icp_warns_when_the_trimmed_pairs_are_off_the_surface(shared_data):
    """The algorithm itself flags a wrong pose (MedAIWarning, ``reliable`` False), whoever calls it."""
    from MedAICommonLib.notices import MedAIWarning

    fixed, moving, truth = bunny_pair(shared_data)
    with pytest.warns(MedAIWarning, match="unreliable"):
        result = icp(fixed, moving, multi_start="axes", trim_fraction=0.9)
    assert pose_errors(result.matrix, truth, moving)[0] > 10.0
    assert not result.reliable
    assert result.inlier_fraction < 0.8 * result.trim_fraction
