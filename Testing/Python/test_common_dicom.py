"""DICOM series import: HU, geometry, and clear errors/warnings for broken series."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from MedAICommonLib import bridge
from MedAICommonLib.geometry import lps_to_ras_points

from dicom_writer import write_ct_series


def test_ct_small_imports_with_hu_and_geometry(scene):
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    node, info = bridge.load_dicom_series(scene, path)
    array, geometry = bridge.array_from_volume(node)
    expected_hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(array[0], expected_hu)
    np.testing.assert_allclose(geometry.origin, lps_to_ras_points(np.array(ds.ImagePositionPatient, float)), atol=1e-5)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    np.testing.assert_allclose(geometry.spacing[:2], (column_spacing, row_spacing), atol=1e-6)
    # Pixel (row 10, column 20) lies at IPP + 20*col_spacing*rowdir + 10*row_spacing*coldir (LPS).
    iop = np.array(ds.ImageOrientationPatient, float)
    lps = np.array(ds.ImagePositionPatient, float) + 20 * column_spacing * iop[:3] + 10 * row_spacing * iop[3:]
    np.testing.assert_allclose(geometry.index_to_point([20, 10, 0]), lps_to_ras_points(lps), atol=1e-4)
    assert info.modality == "CT"


def oblique_directions():
    angle = np.deg2rad(25.0)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([-np.sin(angle) * np.cos(0.3), np.cos(angle) * np.cos(0.3), np.sin(0.3)])
    return row, col / np.linalg.norm(col)


def test_written_oblique_series_imports_with_values_and_positions(scene, tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 2000, size=(6, 10, 12)).astype(float)
    row, col = oblique_directions()
    write_ct_series(tmp_path, hu, spacing_xyz=(0.8, 0.6, 2.5), row_dir=row, col_dir=col)
    node, info = bridge.load_dicom_series(scene, tmp_path)
    array, geometry = bridge.array_from_volume(node)
    np.testing.assert_allclose(array, hu)
    np.testing.assert_allclose(geometry.spacing, (0.8, 0.6, 2.5), atol=1e-5)
    normal = np.cross(row, col)
    lps = np.array([-50.0, -40.0, 10.0]) + 3 * 2.5 * normal + 5 * 0.8 * row + 7 * 0.6 * col
    np.testing.assert_allclose(geometry.index_to_point([5, 7, 3]), lps_to_ras_points(lps), atol=1e-4)
    assert info.warnings == []


def test_missing_slice_is_refused(scene, tmp_path):
    write_ct_series(tmp_path, np.zeros((6, 4, 4)), skip_slices=(3,))
    count = scene.GetNumberOfNodes()
    with pytest.raises(bridge.BridgeError, match="missing about 1 slice"):
        bridge.load_dicom_series(scene, tmp_path)
    assert scene.GetNumberOfNodes() == count


def test_mixed_series_needs_a_choice(scene, tmp_path):
    write_ct_series(tmp_path / "a", np.zeros((3, 4, 4)), series_uid="1.2.3.4")
    write_ct_series(tmp_path / "b", np.ones((3, 4, 4)), series_uid="1.2.3.5")
    with pytest.raises(bridge.BridgeError, match="holds 2 series"):
        bridge.load_dicom_series(scene, tmp_path)
    node, _ = bridge.load_dicom_series(scene, tmp_path, series_uid="1.2.3.5")
    assert bridge.array_from_volume(node)[0].min() == 1


def test_uneven_spacing_and_gantry_tilt_warn(scene, tmp_path):
    write_ct_series(tmp_path / "uneven", np.zeros((4, 4, 4)), positions=[0.0, 2.5, 5.0, 7.9])
    _, info = bridge.load_dicom_series(scene, tmp_path / "uneven")
    assert any("uneven slice spacing" in w for w in info.warnings)
    write_ct_series(tmp_path / "tilt", np.zeros((4, 4, 4)), shift_per_slice=(0.0, 0.5))
    _, info = bridge.load_dicom_series(scene, tmp_path / "tilt")
    assert any("gantry tilt" in w for w in info.warnings)


def test_not_dicom_is_a_clear_error(scene, tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"not a dicom file")
    with pytest.raises(bridge.BridgeError, match="No DICOM images"):
        bridge.load_dicom_series(scene, tmp_path)
