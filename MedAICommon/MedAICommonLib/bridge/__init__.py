"""The MRML bridge: the one place that knows both MRML nodes and arrays/images/files.

Every node <-> array/image conversion and every file read/write in MedAI goes through here.
See :mod:`MedAICommonLib.geometry` for the RAS/LPS/KJI conventions.
"""

from .contours import PLANAR_CONTOUR, planar_contours, set_planar_contours
from .dicom import load_dicom_series
from .errors import BridgeError
from .markups import create_markups, point_labels, points_from_markups
from .models import create_model, points_from_polydata, polydata_from_model
from .nodes import matrix_from_vtk, parent_to_world_matrix, remove_nodes, vtk_matrix_from_array
from .segmentations import (
    SegmentInfo,
    create_segmentation,
    create_segmentation_from_masks,
    labelmap_from_segmentation,
    reference_geometry,
    require_segmentation,
    segment_infos,
    segment_mask,
    segment_masks,
)
from .storage import (
    guess_kind,
    load_markups,
    load_model,
    load_node,
    load_segmentation,
    load_transform,
    load_volume,
    save_node,
)
from .tables import columns_from_table, create_plot_chart, create_table
from .transforms import (
    create_linear_transform,
    itk_to_to_parent_ras,
    matrix_from_transform_node,
    matrix_to_sitk,
    set_fixed_moving_references,
    sitk_to_matrix,
    sitk_to_transform_node,
    to_parent_ras_to_itk,
    transform_node_to_sitk,
    transform_points_ras,
)
from .volumes import (
    array_from_volume,
    array_to_sitk,
    create_volume,
    grids_overlap,
    is_labelmap,
    require_overlap,
    require_scalar_volume,
    require_volume_extent,
    resample_array,
    sitk_to_array,
    sitk_to_volume,
    update_volume,
    volume_geometry,
    volume_to_sitk,
)

__all__ = [
    "PLANAR_CONTOUR",
    "planar_contours",
    "set_planar_contours",
    "BridgeError",
    "SegmentInfo",
    "array_from_volume",
    "array_to_sitk",
    "columns_from_table",
    "create_linear_transform",
    "create_markups",
    "create_model",
    "create_plot_chart",
    "create_segmentation",
    "create_segmentation_from_masks",
    "create_table",
    "create_volume",
    "grids_overlap",
    "guess_kind",
    "is_labelmap",
    "load_dicom_series",
    "require_overlap",
    "require_volume_extent",
    "itk_to_to_parent_ras",
    "labelmap_from_segmentation",
    "load_markups",
    "load_model",
    "load_node",
    "load_segmentation",
    "load_transform",
    "load_volume",
    "matrix_from_transform_node",
    "matrix_from_vtk",
    "matrix_to_sitk",
    "parent_to_world_matrix",
    "point_labels",
    "points_from_markups",
    "points_from_polydata",
    "polydata_from_model",
    "reference_geometry",
    "remove_nodes",
    "require_scalar_volume",
    "require_segmentation",
    "resample_array",
    "save_node",
    "segment_infos",
    "segment_mask",
    "segment_masks",
    "set_fixed_moving_references",
    "sitk_to_array",
    "sitk_to_matrix",
    "sitk_to_transform_node",
    "sitk_to_volume",
    "to_parent_ras_to_itk",
    "transform_node_to_sitk",
    "transform_points_ras",
    "update_volume",
    "volume_geometry",
    "volume_to_sitk",
    "vtk_matrix_from_array",
]
