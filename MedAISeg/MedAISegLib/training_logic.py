"""MedAISeg training Logic: train / fine-tune from volume + segmentation nodes, export, explain.

Nodes are converted through :mod:`MedAICommonLib.bridge` (volumes to SimpleITK images, LPS;
segmentations to label maps on their volume's grid, segment names kept as label names); the
algorithms live in :mod:`.training` and :mod:`.export`. Output nodes (curve table, saliency
volume) are created only when a run succeeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAICommonLib import bridge
from MedAICommonLib.devices import select_device
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.progress import Progress
from MedAICommonLib.runtime import get_scene

from MedAISegLib.learning.training import TrainingConfig, TrainingResult, preprocess_for_bundle, train_and_export
from MedAISegLib.results import ExplainResult, R, TrainingRunResult, expect_result


class MedAITrainingLogic:
    """Headless Logic for training, fine-tuning and explaining models, bound to ``scene``."""

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else get_scene()
        self.last_result: TrainingRunResult | ExplainResult | None = None

    def last_result_as(self, kind: type[R]) -> R:
        """``self.last_result`` checked to be a ``kind`` (:class:`~MedAISegLib.results.TrainingRunResult` after
        training or fine-tuning, :class:`~MedAISegLib.results.ExplainResult` after :meth:`explain`)."""
        return expect_result(self.last_result, kind)

    def _case(self, volume_node, label_node, values_by_name: dict | None = None):
        bridge.require_scalar_volume(volume_node)
        image = bridge.volume_to_sitk(volume_node)
        reference = bridge.volume_geometry(volume_node)
        if label_node is None:
            raise ValueError(f"'{volume_node.GetName()}' has no segmentation: give one label node per volume.")
        if label_node.IsA("vtkMRMLSegmentationNode"):
            labels, geometry, infos = bridge.labelmap_from_segmentation(label_node, reference=reference)
            names = {info.label: info.name for info in infos}
            if values_by_name:  # segment names that the model knows keep the model's label values
                labels, names = _relabel(np.asarray(labels), names, values_by_name)
        elif label_node.IsA("vtkMRMLScalarVolumeNode"):
            labels, geometry = bridge.array_from_volume(label_node)
            labels = (
                bridge.resample_array(labels, geometry, reference, interpolator=sitk.sitkNearestNeighbor)
                if not geometry.same_grid(reference, 1e-3)
                else labels
            )
            geometry, names = reference, {}
        else:
            raise ValueError(f"'{label_node.GetName()}' is neither a segmentation nor a label map volume.")
        label_image = bridge.array_to_sitk(np.asarray(labels).astype(np.uint8), geometry)
        return (image, label_image), names

    def train(
        self,
        volume_nodes,
        label_nodes,
        bundle_dir,
        config: TrainingConfig | None = None,
        init_bundle=None,
        device: str = "auto",
        progress=None,
        on_epoch=None,
        table_node=None,
        nproc_per_node: int = 1,
    ) -> TrainingResult:
        """Train (or fine-tune from ``init_bundle``: a bundle folder or a TorchScript file with a model
        card, see :mod:`.fine_tune`) on pairs of volume and segmentation/label-map nodes and export a
        MONAI bundle to ``bundle_dir`` (recorded as trusted: MedAI wrote its configs). A table node '<bundle> training curves' (epoch,
        loss, and val_dice when a case was held out for validation) is created or updated; ``self.last_result`` has
        the figures (``best_val_dice`` None and ``best_epoch_by`` 'training loss' without a validation case).
        ``nproc_per_node`` > 1: data-parallel training on that many processes of this machine
        (:mod:`.learning.distributed_launch`; ``config.batch_size`` is per process); under ``torchrun`` the
        processes are already there and each one calls this with 1."""
        volumes = list(volume_nodes) if isinstance(volume_nodes, (list, tuple)) else [volume_nodes]
        labels = list(label_nodes) if isinstance(label_nodes, (list, tuple)) else [label_nodes]
        if not volumes or len(volumes) != len(labels):
            raise ValueError(f"Give one segmentation per volume ({len(volumes)} volumes, {len(labels)} segmentations).")
        progress = progress if progress is not None else Progress()
        config = config or TrainingConfig()
        cases, names = [], {}
        for volume, label in zip(volumes, labels):
            case, case_names = self._case(volume, label)
            cases.append(case)
            names.update(case_names)
        config.labels = {**names, **config.labels}
        return self._run(cases, bundle_dir, config, init_bundle, device, progress, on_epoch, table_node, nproc_per_node)

    def _run(
        self, cases, bundle_dir, config, init_model, device, progress, on_epoch, table_node, nproc_per_node: int = 1
    ) -> TrainingResult:
        progress = progress if progress is not None else Progress()
        torch_device = select_device(device)
        progress.update("training", 0.0)
        if nproc_per_node != 1:
            from MedAISegLib.learning.distributed_launch import launch_training

            result = launch_training(
                cases,
                bundle_dir,
                config,
                nproc_per_node,
                init_bundle=init_model,
                device=torch_device,
                progress=progress,
                on_epoch=on_epoch,
                name=Path(bundle_dir).name,
            )
        else:
            result = train_and_export(
                cases,
                bundle_dir,
                config,
                init_bundle=init_model,
                device=torch_device,
                progress=progress,
                on_epoch=on_epoch,
                name=Path(bundle_dir).name,
            )
        keys = ("epoch", "loss", "val_dice") if result.best_dice is not None else ("epoch", "loss")
        columns = {key: [row[key] for row in result.history] for key in keys}
        table = bridge.create_table(self.scene, columns, f"{Path(bundle_dir).name} training curves", node=table_node)
        self.last_result = TrainingRunResult(
            best_val_dice=result.best_dice,
            best_epoch=result.best_epoch,
            best_epoch_by=result.best_epoch_by,
            best_training_loss=result.best_loss,
            epochs_run=result.epochs_run,
            stopped=result.stopped,
            seconds=result.seconds,
            device=str(torch_device),
            files=result.files,
            table=table.GetID(),
            world_size=result.world_size,
            backend=result.backend,
            rank=result.rank,
        )
        progress.update("done", 1.0)
        return result

    def fine_tune_on_case(
        self,
        volume_node,
        segmentation_node,
        model_path,
        output_dir,
        epochs: int = 20,
        device: str = "auto",
        progress=None,
        learning_rate: float = 1e-3,
        table_node=None,
    ) -> TrainingResult:
        """ "Fine-tune on this case": a short training from ``model_path`` (bundle folder or TorchScript
        file with a model card) on one corrected case — the volume and the segmentation the user
        edited in the Segment Editor — exported as a bundle to ``output_dir``, which ``medai segment``
        and :meth:`MedAISegLib.logic.MedAISegLogic.segment_with_model` then run. ``output_dir`` may be
        the bundle ``model_path`` itself (it is read fully before it is overwritten). Segments named
        like a model label keep its value; other segment names extend the label set (new output
        channels). No validation split: the best epoch is the lowest training loss, ``last_result.best_val_dice``
        is None (no Dice is claimed) and a 'no validation case' warning is raised."""
        from MedAISegLib.learning.fine_tune import load_initial_model

        if Path(output_dir).is_file():
            raise ValueError(
                f"{output_dir} is a file; give a folder for the fine-tuned bundle (it may be the "
                "model's own bundle folder, which is then updated)."
            )
        initial = load_initial_model(model_path)
        values_by_name = {name: value for value, name in initial.labels.items()}
        bridge.require_scalar_volume(volume_node)
        case, names = self._case(volume_node, segmentation_node, values_by_name)
        config = TrainingConfig(
            epochs=int(epochs),
            val_fraction=0.0,
            learning_rate=learning_rate,
            patience=int(epochs),
            samples_per_case=4,
            batch_size=2,
            labels={**initial.labels, **names},
        )
        return self._run([case], output_dir, config, initial, device, progress, None, table_node)

    def explain(
        self,
        volume_node,
        model_path,
        segment_name: str | None = None,
        output_node=None,
        device: str = "auto",
        method: str = "auto",
        layer: str | None = None,
    ):
        """Explanation volume '<input> Grad-CAM <segment>' (or '<input> saliency <segment>' for
        gradient×input), 0..1 on the input's grid, for a segment of ``model_path`` (bundle folder or
        TorchScript file with a model card; default segment: its first label). ``method``:
        ``gradcam`` (feature ``layer``, default the decoder's last feature maps), ``gradient`` or ``auto``
        (Grad-CAM unless the model is bare TorchScript)."""
        from MedAISegLib.inference.explain import explanation_map
        from MedAISegLib.learning.fine_tune import load_initial_model

        bridge.require_scalar_volume(volume_node)
        initial = load_initial_model(model_path)
        if not initial.labels:
            raise ValueError(f"{model_path} lists no labels.")
        if segment_name is None:
            value = min(initial.labels)
        else:
            value = next((v for v, n in initial.labels.items() if n == segment_name), None)
            if value is None:
                raise ValueError(
                    f"Segment {segment_name!r} is not in {model_path}; choose one of {list(initial.labels.values())}."
                )
        if method == "auto":
            method = "gradient" if initial.scripted else "gradcam"
        if method == "gradcam" and layer is None and not initial.scripted:
            from MedAISegLib.inference.explain import default_target_layer

            layer = default_target_layer(initial.network)
        torch_device = select_device(device)
        image = bridge.volume_to_sitk(volume_node)
        reference = bridge.volume_geometry(volume_node)
        if Path(model_path).is_dir():
            tensor, affine = preprocess_for_bundle(image, model_path, with_affine=True)
            heat = explanation_map(initial.network, tensor, value, initial.roi, method, layer, device=torch_device)
            geometry = Geometry.from_ijk_to_physical(affine, "RAS", heat.shape[::-1])
            array = bridge.resample_array(np.ascontiguousarray(heat.transpose(2, 1, 0)), geometry, reference)
        else:
            from MedAISegLib.inference.model_card import ModelCard, find_card
            from MedAISegLib.inference.torchscript_model import prepare_channels, restore_to_reference

            card = ModelCard.load(find_card(model_path))
            data, work = prepare_channels([image], card)
            heat = explanation_map(initial.network, data, value, card.roi_size, method, layer, device=torch_device)
            kji = np.ascontiguousarray(heat.transpose(2, 1, 0)) if card.axis_order == "ijk" else heat
            array = restore_to_reference(kji, work, image, labels=False)
        label = "Grad-CAM" if method == "gradcam" else "saliency"
        name = f"{volume_node.GetName()} {label} {initial.labels[value]}"
        node = bridge.create_volume(self.scene, np.asarray(array, dtype=np.float32), reference, name, node=output_node)
        self.last_result = ExplainResult(
            initial.labels[value], int(value), method, layer if method == "gradcam" else None, str(torch_device)
        )
        return node


def _relabel(labels: np.ndarray, names: dict, values_by_name: dict) -> tuple[np.ndarray, dict]:
    """Give segments named like a model label that label's value; others get the next free values."""
    out = np.zeros_like(labels)
    free = max(values_by_name.values(), default=0) + 1
    new_names = {}
    for value, name in sorted(names.items()):
        if name in values_by_name:
            target = values_by_name[name]
        else:
            target, free = free, free + 1
        out[labels == value] = target
        new_names[target] = name
    return out, new_names
