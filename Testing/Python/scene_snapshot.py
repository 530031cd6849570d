"""What saving a scene writes, for tests that a failed or cancelled run changed nothing."""

import hashlib

import numpy as np
import vtk
from vtk.util import numpy_support

from MedAICommonLib import bridge


def saved_scene(scene, folder) -> dict:
    """Save ``scene`` as MRML into ``folder``; return the document plus a digest of every data node's
    voxels and geometry (volumes, and segmentations with segments)."""
    folder.mkdir(parents=True, exist_ok=True)
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    scene.Commit()
    data = {}
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
            scalars = node.GetImageData().GetPointData().GetScalars()
            values = numpy_support.vtk_to_numpy(scalars) if scalars is not None else np.zeros(0)
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            geometry = np.array([matrix.GetElement(r, c) for r in range(4) for c in range(4)])
            data[node.GetID()] = hashlib.sha256(values.tobytes() + geometry.tobytes()).hexdigest()
        elif node.IsA("vtkMRMLSegmentationNode") and node.GetSegmentation().GetNumberOfSegments():
            labels, geometry, _infos = bridge.labelmap_from_segmentation(node)
            data[node.GetID()] = hashlib.sha256(labels.tobytes() + geometry.ijk_to_physical().tobytes()).hexdigest()
    return {"mrml": (folder / "scene.mrml").read_text(), "data": data}
