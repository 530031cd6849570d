"""MedAIRegister's heavy runs (deformable registration) as worker jobs for the panel.

See :mod:`MedAICommonLib.scene_job`: the volumes are written to a private folder, ``medai register``
runs in a separate process, and the transform (and resampled volume) are read back only on success.
"""

from __future__ import annotations

from MedAICommonLib import bridge
from MedAICommonLib.scene_job import JobOutput, SceneJob


def register_job(scene, fixed_node, moving_node, transform_type: str = "bspline", preset: str | None = None,
                 device: str = "cpu", output_transform_node=None, output_volume_node=None,
                 resample: bool = True) -> SceneJob:
    """``medai register FIXED MOVING``: a transform node (with fixed/moving references) that, as the moving
    node's parent, aligns it with the fixed one; optionally the moving volume resampled on the fixed grid."""
    if fixed_node is None or moving_node is None:
        raise ValueError("Select both the fixed and the moving volume.")

    def references(node):
        bridge.set_fixed_moving_references(node, fixed_node, moving_node)

    args = ["register", "{in:fixed}", "{in:moving}", "--output-transform", "{out:transform}",
            "--transform", transform_type, "--device", device]
    if preset:
        args += ["--preset", preset]
    outputs = [JobOutput("transform", "transform.h5", f"{moving_node.GetName()} to {fixed_node.GetName()}",
                         "transform", node=output_transform_node, after_load=references)]
    if resample:
        args += ["--output-volume", "{out:volume}"]
        outputs.append(JobOutput("volume", "registered.nrrd", f"{moving_node.GetName()} registered", "volume",
                                 node=output_volume_node))
    return SceneJob(scene, args, {"fixed": fixed_node, "moving": moving_node}, outputs)
