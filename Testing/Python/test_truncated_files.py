"""A volume or segmentation file cut short is refused, never read with zeros in place of the missing voxels."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.bridge.errors import BridgeError
from MedAICommonLib.bridge.file_integrity import check_complete
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.cli.main import main
from MedAICommonLib.geometry import Geometry


def _cut(source, target, fraction=0.5, drop_bytes=0):
    data = source.read_bytes()
    target.write_bytes(data[: len(data) - drop_bytes] if drop_bytes else data[: int(len(data) * fraction)])
    return target


def test_every_shared_volume_and_segmentation_is_complete(shared_data):
    files = [p for p in shared_data.rglob("*") if p.name.lower().endswith((".nii", ".nii.gz", ".nrrd"))]
    assert len(files) > 20
    for path in files:
        check_complete(path)  # no false alarm on a real file


def test_half_a_real_ct_is_refused_by_every_command(shared_data, tmp_path, capsys, scene):
    cut = _cut(shared_data / "segmentation/totalsegmentator/example_ct_sm.nii.gz", tmp_path / "ct.nii.gz")
    with gzip.open(cut) as handle, pytest.raises(EOFError):
        handle.read()  # the stream really is cut ...
    with pytest.raises(BridgeError, match="truncated"):
        bridge.load_volume(scene, cut)  # ... and is not read as a CT with zeros at the end
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    code = main(["denoise", str(cut), str(tmp_path / "out.nrrd"), "--method", "curvature"])
    assert code == 1
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "out.nrrd").exists()


def test_cut_raw_nrrd_plain_nifti_and_segmentation_are_refused(scene, tmp_path):
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "RAS", (12, 10, 8))
    volume = bridge.create_volume(scene, np.arange(960, dtype=np.int16).reshape(8, 10, 12), geometry, "v")
    labels = np.zeros((8, 10, 12), np.uint16)
    labels[2:6, 3:7, 4:9] = 1
    seg = bridge.create_segmentation(scene, labels, geometry, [SegmentInfo(1, "box")], "s")
    files = [bridge.save_node(volume, tmp_path / "v.nii"), bridge.save_node(seg, tmp_path / "s.seg.nrrd")]
    import SimpleITK as sitk

    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(tmp_path / "raw.nrrd"))
    writer.UseCompressionOff()
    writer.Execute(bridge.volume_to_sitk(volume))
    files.append(tmp_path / "raw.nrrd")
    for path in files:
        check_complete(path)
        cut = _cut(path, tmp_path / f"cut_{path.name}", drop_bytes=12)  # the data's last bytes
        with pytest.raises(BridgeError, match="truncated"):
            check_complete(cut)
    with pytest.raises(BridgeError, match="truncated"):
        bridge.load_segmentation(scene, tmp_path / "cut_s.seg.nrrd")
