"""MedAIRegister's intensity registration (rigid to B-spline) as a worker job for the panel.

See :mod:`MedAICommonLib.jobs.scene_job`: the volumes (and masks) are written to a private folder, ``medai register``
runs in a separate process, and the transform (and resampled volume) are read back only on success.
"""

from __future__ import annotations

from MedAICommonLib import bridge
from MedAICommonLib.jobs.scene_job import JobOutput, SceneJob

from MedAIRegisterLib.registration_settings import Metric, RegistrationDevice, RegistrationSettings, Transform


def _mask_argument(node, key: str) -> str:
    """The ``--fixed-mask``/``--moving-mask`` value for a mask node: a segmentation's first segment, by name,
    or a label map volume (its non-zero voxels)."""
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            raise ValueError(f"The mask {node.GetName()!r} has no segment; add the region to register in as a segment.")
        return f"{{in:{key}}}:{segmentation.GetNthSegment(0).GetName()}"
    if node.IsA("vtkMRMLScalarVolumeNode"):
        return f"{{in:{key}}}"
    raise ValueError(f"The mask {node.GetName()!r} is a {node.GetClassName()}; give a segmentation or a label map.")


def register_job(
    scene,
    fixed_node,
    moving_node,
    transform_type: Transform = "bspline",
    preset: str | None = None,
    device: RegistrationDevice = "cpu",
    output_transform_node=None,
    output_volume_node=None,
    resample: bool = True,
    metric: Metric | None = None,
    sampling_percentage: float | None = None,
    fixed_mask=None,
    moving_mask=None,
) -> SceneJob:
    """``medai register FIXED MOVING``: a transform node (with fixed/moving references) that, as the moving
    node's parent, aligns it with the fixed one; optionally the moving volume resampled on the fixed grid.

    ``preset`` "custom" is the CT-CT preset's settings with ``metric`` (mattes, meansquares, correlation);
    ``sampling_percentage`` is in percent (0 < P <= 100); the masks (segmentation: its first segment, or a
    label map volume) limit where the metric is computed, as in ``MedAIRegisterLogic.register_volumes``.
    The options are generated from :class:`RegistrationSettings` (:meth:`RegistrationSettings.from_panel`).
    """
    if fixed_node is None or moving_node is None:
        raise ValueError("Select both the fixed and the moving volume.")

    def references(node):
        bridge.set_fixed_moving_references(node, fixed_node, moving_node)

    settings = RegistrationSettings.from_panel(transform_type, preset, device, metric, sampling_percentage)
    args = ["register", "{in:fixed}", "{in:moving}", "--output-transform", "{out:transform}", *settings.to_cli_args()]
    inputs = {"fixed": fixed_node, "moving": moving_node}
    for key, node in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask)):
        if node is not None:
            inputs[key] = node
            args += [f"--{key.replace('_', '-')}", _mask_argument(node, key)]
    outputs = [
        JobOutput(
            "transform",
            "transform.h5",
            f"{moving_node.GetName()} to {fixed_node.GetName()}",
            "transform",
            node=output_transform_node,
            after_load=references,
        )
    ]
    if resample:
        args += ["--output-volume", "{out:volume}"]
        outputs.append(
            JobOutput(
                "volume", "registered.nrrd", f"{moving_node.GetName()} registered", "volume", node=output_volume_node
            )
        )
    return SceneJob(scene, args, inputs, outputs)
