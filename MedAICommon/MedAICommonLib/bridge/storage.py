"""File I/O through Slicer's own storage nodes, so files are exactly what Slicer reads and writes.

Supported: volumes (``.nrrd .nhdr .nii .nii.gz .mha .mhd``), segmentations (``.seg.nrrd`` and
label maps), transforms (``.h5 .tfm .txt``), markups (``.mrk.json .fcsv``), models
(``.vtk .vtp .stl .ply .obj``), tables (``.csv .tsv``). Writes are atomic: the storage node
writes into a temporary folder beside the target under the final names (a table's ``.schema.csv``
stays paired with its ``.csv``), and the files are then renamed into place. Only MRML core's storage
nodes are used, as PythonSlicer (where workers run) has no other: ``.mrk.json`` files are read and
written by :mod:`.markups_json` in the format of the Markups module's JSON storage node.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import slicer

from ..notices import warn
from .errors import BridgeError
from .file_integrity import check_complete
from .header_checks import check_volume_header
from .markups_json import read_markups_json, write_markups_json
from .nodes import remove_nodes
from .segmentations import SegmentInfo, create_segmentation

VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
SEGMENTATION_EXTENSIONS = (".seg.nrrd", ".seg.nhdr", ".seg.vtm")
TRANSFORM_EXTENSIONS = (".h5", ".hdf5", ".tfm", ".txt", ".mat")
MARKUPS_EXTENSIONS = (".mrk.json", ".fcsv", ".json")
MODEL_EXTENSIONS = (".vtk", ".vtp", ".stl", ".ply", ".obj", ".vtu")
TABLE_EXTENSIONS = (".csv", ".tsv")


def _has_suffix(path, suffixes) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in suffixes)


def _base_name(path) -> str:
    name = Path(path).name
    for suffix in sorted(
        SEGMENTATION_EXTENSIONS + VOLUME_EXTENSIONS + MARKUPS_EXTENSIONS + MODEL_EXTENSIONS + TRANSFORM_EXTENSIONS,
        key=len,
        reverse=True,
    ):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _require_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BridgeError(f"File not found: {path}; check the path.")
    return path


def _read(scene, storage_node, data_node, path, what: str):
    """Read ``path`` into ``data_node`` with ``storage_node``; on failure remove both and raise."""
    scene.AddNode(storage_node)
    storage_node.SetFileName(str(path))
    ok = storage_node.ReadData(data_node)
    if not ok or (data_node.IsA("vtkMRMLVolumeNode") and data_node.GetImageData() is None):
        remove_nodes(scene, [data_node, storage_node])
        raise BridgeError(f"Could not read {path} as a {what}; the file is missing, corrupt or of another type.")
    data_node.SetAndObserveStorageNodeID(storage_node.GetID())
    return data_node


def load_volume(scene, path, name: str | None = None, labelmap: bool = False):
    """Load a volume file into a new scalar (or label-map) volume node.

    A header with a negative spacing is read with its physical geometry kept and a warning, or refused
    where readers disagree on it (:func:`.header_checks.check_volume_header`)."""
    path = _require_file(path)
    check_complete(path)
    header_warning = check_volume_header(path)
    if header_warning:
        warn(header_warning)
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name or _base_name(path))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetSingleFile(True)
    if labelmap:
        storage.SetCenterImage(False)
    _read(scene, storage, node, path, "volume")
    image = node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        remove_nodes(scene, [node])
        raise BridgeError(
            f"{path} has {image.GetNumberOfScalarComponents()} components per voxel; MedAI needs a scalar volume."
        )
    node.CreateDefaultDisplayNodes()
    if not labelmap and node.GetDisplayNode() is not None:
        node.GetDisplayNode().AutoWindowLevelOn()
    return node


def load_segmentation(scene, path, name: str | None = None, segment_names: dict | None = None):
    """Load a ``.seg.nrrd``/``.seg.vtm`` segmentation, or import a label-map volume as segments.

    For a plain label map, each non-zero value becomes a segment named by ``segment_names``
    (``{value: name}``) or by its value.
    """
    path = _require_file(path)
    if _has_suffix(path, SEGMENTATION_EXTENSIONS):
        check_complete(path)
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or _base_name(path))
        _read(scene, slicer.vtkMRMLSegmentationStorageNode(), node, path, "segmentation")
        node.CreateDefaultDisplayNodes()
        return node
    label_node = load_volume(scene, path, "__medai_temp_labels__", labelmap=True)
    try:
        from .volumes import array_from_volume

        labels, geometry = array_from_volume(label_node)
    finally:
        remove_nodes(scene, [label_node])
    values = [int(v) for v in np.unique(labels) if v != 0]
    if labels.min() < 0 or not np.all(np.equal(np.mod(labels, 1), 0)):
        raise BridgeError(f"{path} is not a label map (needs non-negative integer values).")
    segment_names = segment_names or {}
    segments = [SegmentInfo(v, segment_names.get(v, str(v))) for v in values]
    return create_segmentation(scene, labels.astype(np.uint16), geometry, segments, name or _base_name(path))


def load_transform(scene, path, name: str | None = None):
    """Load an ITK transform file (as Slicer does: the file holds the from-parent transform)."""
    path = _require_file(path)
    for class_name in (
        "vtkMRMLLinearTransformNode",
        "vtkMRMLBSplineTransformNode",
        "vtkMRMLGridTransformNode",
        "vtkMRMLTransformNode",
    ):
        node = scene.AddNewNodeByClass(class_name, name or _base_name(path))
        storage = slicer.vtkMRMLTransformStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(path))
        if storage.ReadData(node):
            node.SetAndObserveStorageNodeID(storage.GetID())
            return node
        remove_nodes(scene, [node, storage])
    raise BridgeError(f"Could not read {path} as a transform file (.h5, .tfm, .txt).")


def load_markups(scene, path, name: str | None = None):
    """Load a ``.mrk.json`` or ``.fcsv`` point list."""
    path = _require_file(path)
    if _has_suffix(path, (".fcsv",)):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name or _base_name(path))
        _read(scene, slicer.vtkMRMLMarkupsFiducialStorageNode(), node, path, "markups file")
        node.CreateDefaultDisplayNodes()
        return node
    # Slicer's JSON storage node is part of the Markups module, absent from PythonSlicer: MedAI's own reader
    return read_markups_json(scene, path, name or _base_name(path))


def load_model(scene, path, name: str | None = None):
    """Load a surface mesh (coordinate system read from the file, LPS by default as in Slicer)."""
    path = _require_file(path)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name or _base_name(path))
    _read(scene, slicer.vtkMRMLModelStorageNode(), node, path, "model")
    if node.GetPolyData() is None or node.GetPolyData().GetNumberOfPoints() == 0:
        remove_nodes(scene, [node])
        raise BridgeError(f"{path} holds no points.")
    node.CreateDefaultDisplayNodes()
    return node


def load_node(scene, path, kind: str | None = None):
    """Load any supported file, choosing the node type from ``kind`` or the extension."""
    kind = kind or guess_kind(path)
    loaders = {
        "volume": load_volume,
        "labelmap": lambda s, p: load_volume(s, p, labelmap=True),
        "segmentation": load_segmentation,
        "transform": load_transform,
        "markups": load_markups,
        "model": load_model,
    }
    if kind not in loaders:
        raise BridgeError(f"Unknown kind of data {kind!r} for {path}")
    return loaders[kind](scene, path)


def guess_kind(path) -> str:
    """'volume', 'segmentation', 'transform', 'markups' or 'model' from a file name."""
    if _has_suffix(path, SEGMENTATION_EXTENSIONS):
        return "segmentation"
    if _has_suffix(path, (".mrk.json", ".fcsv")):
        return "markups"
    if _has_suffix(path, VOLUME_EXTENSIONS):
        return "volume"
    if _has_suffix(path, TRANSFORM_EXTENSIONS):
        return "transform"
    if _has_suffix(path, MODEL_EXTENSIONS):
        return "model"
    raise BridgeError(f"Cannot tell what {path} holds from its extension.")


def _storage_node_for(node, path):
    if node.IsA("vtkMRMLSegmentationNode"):
        return slicer.vtkMRMLSegmentationStorageNode()
    if node.IsA("vtkMRMLVolumeNode"):
        return slicer.vtkMRMLVolumeArchetypeStorageNode()
    if node.IsA("vtkMRMLTransformNode"):
        return slicer.vtkMRMLTransformStorageNode()
    if node.IsA("vtkMRMLMarkupsNode") and _has_suffix(path, (".fcsv",)):
        return slicer.vtkMRMLMarkupsFiducialStorageNode()
    if node.IsA("vtkMRMLModelNode"):
        return slicer.vtkMRMLModelStorageNode()
    if node.IsA("vtkMRMLTableNode"):
        return slicer.vtkMRMLTableStorageNode()
    raise BridgeError(f"Saving {node.GetClassName()} is not supported.")


def save_node(node, path, compress: bool = True) -> Path:
    """Write ``node`` to ``path`` with Slicer's storage node for it, atomically.

    The storage node writes into a temporary folder beside ``path`` under the final file names, so the
    files a storage node pairs by name (a table's ``FILE.schema.csv``, a ``.seg.vtm``'s folder, an
    ``.nhdr``'s data file) keep their names; each is then renamed into place, the named file last.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".medai-tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _write_into(node, staging / path.name, compress)
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
        for item in written:
            target = path.parent / item.name
            if item.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _write_into(node, path: Path, compress: bool) -> None:
    """Write ``node`` to ``path`` with its storage node (or MedAI's .mrk.json writer)."""
    if node.IsA("vtkMRMLMarkupsNode") and not _has_suffix(path, (".fcsv",)):
        write_markups_json(node, path)  # .mrk.json, written by MedAI's own writer (see load_markups)
        return
    scene = node.GetScene()
    storage = _storage_node_for(node, path)
    scene.AddNode(storage)
    try:
        storage.SetFileName(str(path))
        if hasattr(storage, "SetUseCompression"):
            storage.SetUseCompression(1 if compress else 0)
        if not storage.WriteData(node):
            raise BridgeError(
                f"Could not write {node.GetName()} to {path.parent.parent / path.name}; is the folder writable?"
            )
    finally:
        scene.RemoveNode(storage)
