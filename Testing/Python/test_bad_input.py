"""Bad input is refused with a clear message naming the problem, and the scene is left exactly as it was.

Each case runs a real Logic call (or reads a real broken file) on a scene holding valid data, then
checks the error text and that no node was added, removed or modified.
"""

import re

import numpy as np
import pytest
from scene_snapshot import saved_scene

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic
from MedAIPlanLib.logic import MedAIPlanLogic
from MedAIRegisterLib.logic import MedAIRegisterLogic
from MedAISegLib.logic import MedAISegLogic


@pytest.fixture
def data(scene):
    phantom = make_ct_phantom(shape_kji=(12, 24, 24), spacing=(6.0, 6.0, 8.0))
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "ct")
    segments = [SegmentInfo(v, n) for v, n in phantom.names.items()]
    structures = bridge.create_segmentation(
        scene, phantom.labels, phantom.geometry, segments, "structures", reference_volume=ct
    )
    far = Geometry((6.0, 6.0, 8.0), (5000.0, 5000.0, 5000.0), np.eye(3), "RAS", (12, 24, 24))
    far_ct = bridge.create_volume(scene, phantom.ct, far, "far away ct")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty segmentation")
    blank = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")
    nan = phantom.ct.copy()
    nan[3, 4, 5] = np.nan
    nan_ct = bridge.create_volume(scene, nan, phantom.geometry, "ct with NaN")
    inf = phantom.ct.copy()
    inf[1, 2, 3] = np.inf
    inf_ct = bridge.create_volume(scene, inf, phantom.geometry, "ct with Inf")
    extreme_ct = bridge.create_volume(scene, phantom.ct * 1e30, phantom.geometry, "unscaled ct")
    single = bridge.create_volume(scene, phantom.ct[:1], phantom.geometry, "single slice")
    three = bridge.create_markups(scene, np.arange(9.0).reshape(3, 3), "three points")
    two = bridge.create_markups(scene, np.arange(6.0).reshape(2, 3), "two points")
    return {
        "ct": ct,
        "structures": structures,
        "far": far_ct,
        "empty": empty,
        "blank": blank,
        "nan": nan_ct,
        "inf": inf_ct,
        "extreme": extreme_ct,
        "single": single,
        "three": three,
        "two": two,
    }


def _truncated_model():
    """A 'model.ts' that is a truncated archive, with no model card beside it."""
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "model.ts"
    path.write_bytes(b"PK\x03\x04 truncated")
    return path


def snapshot(scene):
    return sorted(
        (scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetMTime()) for i in range(scene.GetNumberOfNodes())
    )


CASES = {
    # MedAISeg
    "threshold on a segmentation node": (
        lambda s, d: MedAISegLogic(s).threshold(d["structures"], 0, 100),
        "scalar volume",
    ),
    "threshold on nothing": (lambda s, d: MedAISegLogic(s).threshold(None, 0, 100), "scalar volume"),
    "threshold on a volume without voxels": (lambda s, d: MedAISegLogic(s).threshold(d["blank"], 0, 100), "no voxels"),
    "denoise with an unknown method": (lambda s, d: MedAISegLogic(s).denoise(d["ct"], "median-magic"), "median-magic"),
    "evaluate against an empty segmentation": (
        lambda s, d: MedAISegLogic(s).evaluate(d["empty"], d["structures"]),
        "no segments",
    ),
    "model file that does not exist": (
        lambda s, d: MedAISegLogic(s).segment_with_model([d["ct"]], "/nonexistent/model.ts", device="cpu"),
        "nonexistent",
    ),
    "region growing without seeds": (lambda s, d: MedAISegLogic(s).region_growing(d["ct"], np.zeros((0, 3))), "seed"),
    "denoise a volume with NaN": (lambda s, d: MedAISegLogic(s).denoise(d["nan"], "nlm", device="cpu"), "NaN"),
    "denoise an unscaled volume": (lambda s, d: MedAISegLogic(s).denoise(d["extreme"], "nlm", device="cpu"), "rescale"),
    "TorchScript model without a card": (
        lambda s, d: MedAISegLogic(s).segment_with_model([d["ct"]], str(_truncated_model()), device="cpu"),
        "model card",
    ),
    # MedAIRegister
    "register a volume with NaN": (lambda s, d: MedAIRegisterLogic(s).register_volumes(d["ct"], d["nan"]), "NaN"),
    "register a volume with Inf": (lambda s, d: MedAIRegisterLogic(s).register_volumes(d["inf"], d["ct"]), "infinite"),
    "register a single slice": (
        lambda s, d: MedAIRegisterLogic(s).register_volumes(d["ct"], d["single"]),
        "single slice",
    ),
    "register volumes that do not overlap": (
        lambda s, d: MedAIRegisterLogic(s).register_volumes(d["ct"], d["far"]),
        "do not overlap",
    ),
    "register a volume with itself as a segmentation": (
        lambda s, d: MedAIRegisterLogic(s).register_volumes(d["ct"], d["structures"]),
        "scalar volume",
    ),
    "register with an unknown preset": (
        lambda s, d: MedAIRegisterLogic(s).register_volumes(d["ct"], d["ct"], preset="mri-to-banana"),
        "mri-to-banana",
    ),
    "register with an unknown device": (
        lambda s, d: MedAIRegisterLogic(s).register_volumes(d["ct"], d["ct"], device="tpu"),
        "tpu",
    ),
    "landmarks with different point counts": (
        lambda s, d: MedAIRegisterLogic(s).register_landmarks(d["three"], d["two"]),
        "point",
    ),
    # MedAIPlan
    "plan on an empty segmentation": (
        lambda s, d: MedAIPlanLogic(s).plan(d["ct"], d["empty"], "lesion", 60.0, gantry_angles=[0]),
        "no segments",
    ),
    "plan on a CT with NaN": (
        lambda s, d: MedAIPlanLogic(s).plan(d["nan"], d["structures"], "lesion", 60.0, gantry_angles=[0]),
        "NaN",
    ),
    "DVH of a dose with NaN": (lambda s, d: PlanEvaluationLogic(s).compute_dvh(d["nan"], d["structures"]), "NaN"),
    "gamma of doses that do not overlap": (
        lambda s, d: PlanEvaluationLogic(s).gamma(d["ct"], d["far"]),
        "do not overlap",
    ),
    "plan without a target": (
        lambda s, d: MedAIPlanLogic(s).plan(d["ct"], d["structures"], "PTV", 60.0, gantry_angles=[0]),
        "PTV",
    ),
    "plan with a non-positive prescription": (
        lambda s, d: MedAIPlanLogic(s).plan(d["ct"], d["structures"], "lesion", 0.0, gantry_angles=[0]),
        "prescription",
    ),
    "plan with the isocentre outside the CT": (
        lambda s, d: MedAIPlanLogic(s).plan(
            d["ct"], d["structures"], "lesion", 60.0, gantry_angles=[0], isocenter_lps=(9000.0, 0.0, 0.0)
        ),
        "isocent",
    ),
    "plan without gantry angles": (
        lambda s, d: MedAIPlanLogic(s).plan(d["ct"], d["structures"], "lesion", 60.0, gantry_angles=[]),
        "gantry",
    ),
    "DVH of structures that miss the dose grid": (
        lambda s, d: PlanEvaluationLogic(s).compute_dvh(d["far"], d["structures"]),
        "overlap",
    ),
    "gamma with a segmentation as dose": (
        lambda s, d: PlanEvaluationLogic(s).gamma(d["structures"], d["ct"]),
        "scalar volume",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_and_scene_unchanged(scene, data, case, tmp_path):
    call, expected = CASES[case]
    saved_before = saved_scene(scene, tmp_path / "before")
    before = snapshot(scene)
    with pytest.raises(ValueError, match=f"(?i){re.escape(expected)}") as error:
        call(scene, data)
    assert len(str(error.value)) > 20, "the message must say what is wrong and what to do"
    assert snapshot(scene) == before
    assert saved_scene(scene, tmp_path / "after") == saved_before, "the scene saved after the failed run differs"


BAD_FILES = {
    "truncated.nrrd": b"NRRD0004\ntype: short\ndimension: 3\nsizes: 20 20 20\nencoding: raw\n\n\x00\x01\x02",
    "garbage.nii.gz": b"\x1f\x8b\x08\x00 not really gzip",
    "empty.nii": b"",
    "text.mha": b"this is not a MetaImage header at all",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_corrupt_volume_files_are_refused(scene, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    before = snapshot(scene)
    with pytest.raises(bridge.BridgeError, match="(?i)could not read|corrupt|no voxels"):
        bridge.load_volume(scene, path)
    assert snapshot(scene) == before
