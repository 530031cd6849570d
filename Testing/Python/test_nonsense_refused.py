"""Nonsense in, a clear refusal (or a warning) out: option values, single-slice doses, grids apart in space.

Each case runs the ``medai`` command as a user would, on SlicerRT's test doses and structures (or a file
the test derives from them), and reads the one-line error or the warnings from the JSON report.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch
from test_seg_bad_models import card_model  # noqa: I001
from test_seg_inference import threshold_net, write_bundle

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAICommonLib.notices import MedAIWarning
from MedAISegLib.inference.bundle_trust import record_trust
from MedAISegLib.inference.model_checks import load_state_dict_file, pickle_code_references
from MedAISegLib.logic import MedAISegLogic


def _run(argv, tmp_path, capsys):
    """Exit code, the report (JSON) and stderr of one ``medai`` run."""
    report = tmp_path / "report.json"
    code = main([*argv, "--report", str(report)])
    return code, json.loads(report.read_text()), capsys.readouterr().err


@pytest.fixture
def slicerrt(shared_data):
    """SlicerRT's test data folder (doses, structure sets)."""
    return shared_data / "rt" / "SlicerRT"


def _ras_extent(path, axis: int) -> str:
    """'R lo..hi' (axis 0), 'A ..' or 'S ..' of a volume file's voxel box in RAS mm, computed with SimpleITK."""
    image = sitk.ReadImage(str(path))
    size = image.GetSize()
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint((x, y, z))
            for x in (-0.5, size[0] - 0.5)
            for y in (-0.5, size[1] - 0.5)
            for z in (-0.5, size[2] - 0.5)
        ]
    )
    values = corners[:, axis] * (-1.0 if axis < 2 else 1.0)  # LPS -> RAS
    return f"{'RAS'[axis]} {values.min():.1f}..{values.max():.1f}"


def _shifted(source, target, shift_mm):
    """Copy of the volume ``source`` moved by ``shift_mm`` (LPS x, y, z), written to ``target``."""
    image = sitk.ReadImage(str(source))
    image.SetOrigin(tuple(np.add(image.GetOrigin(), shift_mm)))
    sitk.WriteImage(image, str(target))
    return target


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--dose-grid", "0", "--dose-grid must be a positive number"),
        ("--dose-grid", "-3", "--dose-grid must be a positive number"),
        ("--memory-limit-gb", "-4", "--memory-limit-gb must be a positive number"),
        ("--bixel-width", "0", "--bixel-width must be a positive number"),
    ],
)
def test_plan_options_out_of_range_are_refused(slicerrt, tmp_path, capsys, option, value, words):
    """A zero dose grid used to become 3 mm and a negative memory limit passed in silence."""
    code, report, err = _run(
        [
            "plan",
            str(slicerrt / "TinyPatientCT.nrrd"),
            str(slicerrt / "TinyPatientStructureSet.seg.vtm"),
            "--target",
            "PTV",
            "--prescription",
            "60",
            "--output-dose",
            str(tmp_path / "d.nrrd"),
            f"{option}={value}",
        ],
        tmp_path,
        capsys,
    )
    assert code == 1
    assert words in report["error"]
    assert words in err
    assert not (tmp_path / "d.nrrd").exists()


def test_negative_isodose_levels_are_refused(slicerrt, tmp_path, capsys):
    code, report, err = _run(
        ["isodose", str(slicerrt / "TinyPatientDose.nrrd"), str(tmp_path / "iso"), "--levels=-10,50"], tmp_path, capsys
    )
    assert code == 1
    assert "Isodose levels must be positive" in report["error"]
    assert "-10" in report["error"]
    assert not (tmp_path / "iso").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--threshold-percent", "150"), ("--threshold-percent", "-5"), ("--dta-mm", "0"), ("--dose-percent", "-3")],
)
def test_gamma_criteria_out_of_range_are_refused(slicerrt, tmp_path, capsys, option, value):
    """A 150 % threshold used to print 'pass rate nan %' and exit 0."""
    dose = str(slicerrt / "TinyPatientDose.nrrd")
    code, report, err = _run(["gamma", dose, dose, "--device", "cpu", f"{option}={value}"], tmp_path, capsys)
    assert code == 1
    assert "out of range" in report["error"]
    assert value in report["error"]
    assert "nan" not in err.lower()


def _single_slice(source, target):
    """The middle axial slice of ``source`` as a one-slice volume (same spacing and in-plane origin)."""
    image = sitk.ReadImage(str(source))
    k = image.GetSize()[2] // 2
    sitk.WriteImage(image[:, :, k : k + 1], str(target))
    return target


@pytest.mark.parametrize("command", ["dvh", "gamma", "isodose"])
def test_single_slice_dose_is_refused_naming_the_file_and_shape(slicerrt, tmp_path, capsys, command):
    slice_file = _single_slice(slicerrt / "EclipseProstate_Dose.nrrd", tmp_path / "one_slice.nrrd")
    argv = {
        "dvh": ["dvh", str(slice_file), str(slicerrt / "EclipseProstate_Structures.seg.vtm")],
        "gamma": ["gamma", str(slicerrt / "EclipseProstate_Dose.nrrd"), str(slice_file), "--device", "cpu"],
        "isodose": ["isodose", str(slice_file), str(tmp_path / "iso")],
    }[command]
    code, report, _ = _run(argv, tmp_path, capsys)
    assert code == 1
    assert str(slice_file) in report["error"]
    assert "136x86x1" in report["error"]
    assert "3D dose" in report["error"]


def test_gamma_of_doses_apart_in_space_is_refused_with_both_extents(slicerrt, tmp_path, capsys):
    reference = slicerrt / "TinyPatientDose.nrrd"
    far = _shifted(reference, tmp_path / "far.nrrd", (1000.0, 0.0, 0.0))
    code, report, _ = _run(["gamma", str(reference), str(far), "--device", "cpu"], tmp_path, capsys)
    assert code == 1
    error = report["error"]
    assert "do not overlap" in error
    assert f"'TinyPatientDose' spans {_ras_extent(reference, 0)}" in error  # both boxes, RAS mm
    assert f"'far' spans {_ras_extent(far, 0)}" in error


def test_gamma_of_partly_overlapping_doses_warns_with_the_fraction(slicerrt, tmp_path, capsys):
    reference = slicerrt / "TinyPatientDose.nrrd"
    half = _shifted(reference, tmp_path / "half.nrrd", (245.0, 0.0, 0.0))  # 10 voxels of 49 mm: half the box
    code, report, err = _run(["gamma", str(reference), str(half), "--device", "cpu"], tmp_path, capsys)
    assert code == 0
    (warning,) = [w for w in report["warnings"] if "overlap only partly" in w]
    assert "50.0 %" in warning
    assert "warning: The reference and evaluated doses overlap only partly" in err


def test_dvh_of_structures_apart_from_the_dose_is_refused_with_both_extents(slicerrt, tmp_path, capsys):
    far = _shifted(slicerrt / "EclipseProstate_Dose.nrrd", tmp_path / "far.nrrd", (0.0, 0.0, 2000.0))
    code, report, _ = _run(["dvh", str(far), str(slicerrt / "EclipseProstate_Structures.seg.vtm")], tmp_path, capsys)
    assert code == 1
    error = report["error"]
    assert "overlaps the dose grid" in error
    assert f"the dose spans {_ras_extent(far, 0)}" in error
    assert _ras_extent(far, 2) in error
    assert "the structures span" in error


class _RunsCode:
    """Pickles as a call of os.system (a shell command that would leave ``marker``); never unpickled here."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("kind", ["bundle weights", "TorchScript with card"])
def test_model_file_holding_code_is_named_so_not_corrupt(scene, shared_data, tmp_path, writer, kind):
    """A pickle that calls os.system used to be reported as 'truncated or corrupt'."""
    marker = tmp_path / "code_ran"
    if kind == "bundle weights":
        model = write_bundle(tmp_path / "bundle")
        path = model / "models" / "model.pt"
        record_trust(model)
    else:
        model = path = card_model(tmp_path / "card", threshold_net(), inputs=1)
    payload = {"weight": torch.zeros(2), "hook": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)
    assert pickle_code_references(path) == [f"{os.system.__module__}.system"]
    volume = bridge.load_volume(scene, shared_data / "rt" / "SlicerRT" / "TinyPatientCT.nrrd")
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="holds code") as error:
        MedAISegLogic(scene).segment_with_model([volume], model, device="cpu")
    message = str(error.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message
    assert "corrupt" not in message
    assert not marker.exists()
    assert scene.GetNumberOfNodes() == nodes_before


def test_plain_weights_name_no_code(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(threshold_net().state_dict(), path)
    assert pickle_code_references(path) == []
    assert set(load_state_dict_file(path)) == {"weight", "bias"}


def _read_table_types(scene, path) -> dict:
    """{column: VTK array class} of a CSV read back with Slicer's table storage node (types from its schema)."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    storage = slicer.vtkMRMLTableStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(table)
    vtk_table = table.GetTable()
    return {
        vtk_table.GetColumn(i).GetName(): vtk_table.GetColumn(i).GetClassName()
        for i in range(vtk_table.GetNumberOfColumns())
    }


@pytest.mark.parametrize("command", ["lesions", "dvh"])
def test_tables_are_written_with_their_schema_and_nothing_else(scene, shared_data, tmp_path, capsys, command):
    """Writing through a temporary name left '.medai-tmp-*.schema.csv' beside every table and no schema."""
    out = tmp_path / "tables"
    if command == "lesions":
        argv = ["lesions", str(shared_data / "segmentation" / "pyradiomics" / "breast1_label.nrrd")]
        name, numeric = "lesions.csv", "volume_mm3"
    else:
        folder = shared_data / "rt" / "SlicerRT"
        argv = ["dvh", str(folder / "TinyPatientDose.nrrd"), str(folder / "TinyPatientStructureSet.seg.vtm")]
        name, numeric = "metrics.csv", "Dmean_Gy"
    code, _, _ = _run([*argv, "--table", str(out / name)], tmp_path, capsys)
    assert code == 0
    stem = name[: -len(".csv")]
    assert sorted(p.name for p in out.iterdir()) == [name, f"{stem}.schema.csv"]
    types = _read_table_types(scene, out / name)
    assert types[numeric] == "vtkTypeFloat64Array"


@pytest.fixture
def named_reference(scene, shared_data, tmp_path):
    """TotalSegmentator's liver (label 5) and spleen (label 1), saved as named segments in that order."""
    labels, geometry = bridge.array_from_volume(
        bridge.load_volume(scene, shared_data / "segmentation" / "totalsegmentator" / "example_seg.nii.gz")
    )
    node = bridge.create_segmentation_from_masks(
        scene, {"liver": labels == 5, "spleen": labels == 1}, geometry, "named reference"
    )
    return bridge.save_node(node, tmp_path / "named_reference.seg.nrrd"), labels


def _dice(a, b) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_evaluate_never_pairs_named_segments_with_label_numbers(named_reference, shared_data, tmp_path, capsys):
    """Named 'liver' (first segment) used to be scored against label 1 of the label map, the spleen."""
    reference, _ = named_reference
    prediction = shared_data / "segmentation" / "totalsegmentator" / "example_seg_fast.nii.gz"
    code, report, _ = _run(["evaluate", str(reference), str(prediction)], tmp_path, capsys)
    assert code == 1
    assert "the reference has liver, spleen" in report["error"]
    assert "the prediction has 1, 2, 3" in report["error"]
    assert "--label-names" in report["error"]


def test_evaluate_pairs_by_the_names_given_to_label_values(named_reference, shared_data, tmp_path, capsys):
    reference, labels = named_reference
    prediction = shared_data / "segmentation" / "totalsegmentator" / "example_seg_fast.nii.gz"
    fast = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))  # same grid, KJI
    code, report, _ = _run(
        ["evaluate", str(reference), str(prediction), "--label-names", "1=spleen,5=liver"], tmp_path, capsys
    )
    assert code == 0
    segments = report["metrics"]["segments"]
    assert segments["liver"]["prediction_label"] == 5
    assert segments["spleen"]["prediction_label"] == 1
    assert segments["liver"]["dice"] == pytest.approx(_dice(labels == 5, fast == 5), abs=1e-9)
    assert segments["spleen"]["dice"] == pytest.approx(_dice(labels == 1, fast == 1), abs=1e-9)
    (warning,) = [w for w in report["warnings"] if "paired by name only" in w]
    assert "not in the reference (ignored): 2, 3, 4" in warning


def test_evaluate_of_partly_overlapping_segmentations_warns_with_the_fraction(
    named_reference, shared_data, tmp_path, capsys
):
    reference, _ = named_reference
    half = _shifted(
        shared_data / "segmentation" / "totalsegmentator" / "example_seg_fast.nii.gz",
        tmp_path / "half.nii.gz",
        (0.0, 0.0, 45.0),
    )  # 30 slices of 3 mm: half the box along S
    code, report, _ = _run(
        ["evaluate", str(reference), str(half), "--label-names", "1=spleen,5=liver"], tmp_path, capsys
    )
    assert code == 0
    (warning,) = [w for w in report["warnings"] if "overlap only partly" in w]
    assert "50.0 % of 'named_reference'" in warning


def test_evaluate_of_segmentations_apart_in_space_is_refused(named_reference, shared_data, tmp_path, capsys):
    reference, _ = named_reference
    far = _shifted(
        shared_data / "segmentation" / "totalsegmentator" / "example_seg_fast.nii.gz",
        tmp_path / "far.nii.gz",
        (0.0, 0.0, 1000.0),
    )
    code, report, _ = _run(
        ["evaluate", str(reference), str(far), "--label-names", "1=spleen,5=liver"], tmp_path, capsys
    )
    assert code == 1
    assert "do not overlap" in report["error"]
    assert f"'far' spans {_ras_extent(far, 0)}, {_ras_extent(far, 1)}, {_ras_extent(far, 2)}" in report["error"]


def _write_nrrd(path, array_kji, fields: str):
    """A raw little-endian int16 NRRD with the given extra header fields."""
    k, j, i = array_kji.shape
    header = f"NRRD0004\ntype: short\ndimension: 3\nsizes: {i} {j} {k}\nendian: little\nencoding: raw\n{fields}\n\n"
    path.write_bytes(header.encode() + array_kji.astype("<i2").tobytes())
    return path


def test_negative_nrrd_spacing_keeps_the_physical_geometry_and_says_so(scene, tmp_path):
    """'spacings: -2 1 1.5' (no space): voxel (i, j, k) lies at LPS (-2 i, j, 1.5 k); never mirrored in silence."""
    values = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    path = _write_nrrd(tmp_path / "negative.nrrd", values, "spacings: -2 1 1.5")
    with pytest.warns(MedAIWarning, match=r"negative spacing \(-2 \(axis 0\).*physical geometry is kept"):
        node = bridge.load_volume(scene, path)
    array, geometry = bridge.array_from_volume(node)
    assert geometry.spacing == pytest.approx((2.0, 1.0, 1.5))
    kji = np.argwhere(np.ones(array.shape, bool))
    lps = geometry.to_space("LPS").index_to_point(kji[:, ::-1].astype(float))
    file_ijk = np.rint(lps / np.array([-2.0, 1.0, 1.5])).astype(int)  # the file's own definition
    np.testing.assert_allclose(lps, file_ijk * np.array([-2.0, 1.0, 1.5]), atol=1e-6)
    assert np.array_equal(array[tuple(kji.T)], values[file_ijk[:, 2], file_ijk[:, 1], file_ijk[:, 0]])


def test_nrrd_spacings_with_a_space_are_refused_with_the_fix(scene, tmp_path):
    path = _write_nrrd(
        tmp_path / "both.nrrd", np.zeros((2, 2, 2), np.int16), "space: left-posterior-superior\nspacings: -2 1 1"
    )
    with pytest.raises(ValueError, match="both 'spacings' and a 'space'.*space directions"):
        bridge.load_volume(scene, path)


def test_negative_nifti_pixdim_is_refused(scene, shared_data, tmp_path):
    """TotalSegmentator's CT with pixdim[1] made negative: ITK would mirror it against nibabel; refused."""
    source = shared_data / "segmentation" / "totalsegmentator" / "example_ct_sm.nii.gz"
    header = bytearray(gzip.decompress(source.read_bytes()))
    assert struct.unpack("<f", header[80:84])[0] == pytest.approx(3.0)
    header[80:84] = struct.pack("<f", -3.0)
    path = tmp_path / "negative_pixdim.nii"
    path.write_bytes(bytes(header))
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=r"negative voxel size \(pixdim\[1..3\] = -3, 3, 3\).*mirrored"):
        bridge.load_volume(scene, path)
    assert scene.GetNumberOfNodes() == nodes_before
