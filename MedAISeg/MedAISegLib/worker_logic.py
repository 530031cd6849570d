"""MedAISeg's heavy runs as worker jobs (:mod:`MedAICommonLib.jobs.scene_job`), for the panel.

AI inference and training run in a separate process, exchanging files with the scene, so that a
crash, an out-of-memory kill or a Cancel cannot take the user's unsaved scene with them. Each builder
returns a :class:`~MedAICommonLib.jobs.scene_job.SceneJob`; the panel starts it and polls it from a timer.
The command lines are generated from the settings of :mod:`MedAISegLib.run_settings`.
"""

from __future__ import annotations

from MedAICommonLib.devices import Device
from MedAICommonLib.jobs.scene_job import JobOutput, SceneJob

from MedAISegLib.run_settings import (
    ExplainMethod,
    ExplainSettings,
    FineTuneSettings,
    ModelSegmentationSettings,
    Network,
    TrainingSettings,
)


def segment_with_model_job(
    scene,
    input_nodes: list,
    model_path: str,
    device: Device = "auto",
    flip_tta: bool = False,
    output_node=None,
    trust_bundle: bool = False,
    uncertainty: bool = False,
) -> SceneJob:
    """``medai segment`` with a model on one or more input channels; the output is a segmentation node.

    ``trust_bundle`` passes ``--trust-bundle``: only after the user confirmed a bundle from outside
    the catalogue (its configs can run Python code). ``uncertainty`` also returns the voxel-wise
    entropy (nats) as a volume node (key ``"uncertainty"``).
    """
    if not input_nodes or input_nodes[0] is None:
        raise ValueError("Select the input volume to segment.")
    if not model_path:
        raise ValueError("Choose a model (a MONAI bundle folder or a TorchScript file with its card).")
    inputs = {f"channel{i}": node for i, node in enumerate(input_nodes)}
    settings = ModelSegmentationSettings(str(model_path), device, bool(flip_tta), bool(trust_bundle))
    args = ["segment", "{in:channel0}", "{out:segmentation}", *settings.to_cli_args()]
    for key in list(inputs)[1:]:
        args += ["--extra-input", f"{{in:{key}}}"]
    outputs = [
        JobOutput(
            "segmentation",
            "segmentation.seg.nrrd",
            f"{input_nodes[0].GetName()} segmentation",
            "segmentation",
            node=output_node,
        )
    ]
    if uncertainty:
        args += ["--uncertainty", "{out:uncertainty}"]
        outputs.append(
            JobOutput("uncertainty", "uncertainty.nrrd", f"{input_nodes[0].GetName()} uncertainty", "volume")
        )
    return SceneJob(scene, args, inputs, outputs)


def train_job(
    scene,
    volume_nodes: list,
    label_nodes: list,
    bundle_folder: str,
    network: Network = "segresnet",
    epochs: int = 50,
    spacing_mm: float = 1.5,
    device: Device = "auto",
    init_bundle: str | None = None,
) -> SceneJob:
    """``medai train`` on labelled cases from the scene; the worker writes the bundle to ``bundle_folder``."""
    if not volume_nodes or len(volume_nodes) != len(label_nodes) or None in volume_nodes or None in label_nodes:
        raise ValueError("Training needs one label segmentation per input volume; select both.")
    if not bundle_folder:
        raise ValueError("Choose the folder the trained model (bundle) is written to.")
    inputs = {}
    args = ["train", "--images"]
    for i, node in enumerate(volume_nodes):
        inputs[f"image{i}"] = node
        args.append(f"{{in:image{i}}}")
    args.append("--labels")
    for i, node in enumerate(label_nodes):
        inputs[f"label{i}"] = node
        args.append(f"{{in:label{i}}}")
    settings = TrainingSettings(
        int(epochs), network, (float(spacing_mm),) * 3, device, str(init_bundle) if init_bundle else None
    )
    args += ["--output", str(bundle_folder), *settings.to_cli_args()]
    return SceneJob(scene, args, inputs, [])


def fine_tune_job(
    scene,
    volume_node,
    segmentation_node,
    model_path: str,
    bundle_folder: str,
    epochs: int = 20,
    device: Device = "auto",
) -> SceneJob:
    """ "Fine-tune on this case": ``medai fine-tune`` on the volume and the segmentation the user corrected;
    the worker writes the fine-tuned bundle to ``bundle_folder`` (which may be the model's own bundle)."""
    if volume_node is None or segmentation_node is None:
        raise ValueError("Select the volume and its corrected segmentation to fine-tune on.")
    if not model_path or not bundle_folder:
        raise ValueError("Choose the model to fine-tune and the folder the fine-tuned bundle is written to.")
    settings = FineTuneSettings(str(model_path), int(epochs), device=device)
    args = ["fine-tune", "{in:volume}", "{in:segmentation}", "--output", str(bundle_folder), *settings.to_cli_args()]
    return SceneJob(scene, args, {"volume": volume_node, "segmentation": segmentation_node}, [])


def explain_job(
    scene,
    volume_node,
    model_path: str,
    device: Device = "auto",
    segment: str | None = None,
    method: ExplainMethod = "auto",
    trust_bundle: bool = False,
    output_node=None,
) -> SceneJob:
    """``medai explain``: the model's explanation map for one label (default: its first) as a volume node,
    0..1 on the input's grid (see ``MedAISegLib.training_logic.MedAITrainingLogic.explain``), named
    "<input> saliency" or written into ``output_node``. ``trust_bundle`` passes ``--trust-bundle``: only
    after the user confirmed a bundle from outside the catalogue."""
    if volume_node is None:
        raise ValueError("Select the input volume to explain the model on.")
    if not model_path:
        raise ValueError("Choose a model (a MONAI bundle folder or a TorchScript file with its card).")
    settings = ExplainSettings(str(model_path), segment or None, method, device, bool(trust_bundle))
    args = ["explain", "{in:volume}", "--output", "{out:saliency}", *settings.to_cli_args()]
    output = JobOutput("saliency", "saliency.nrrd", f"{volume_node.GetName()} saliency", "volume", node=output_node)
    return SceneJob(scene, args, {"volume": volume_node}, [output])
