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

from .training import TrainingConfig, TrainingResult, preprocess_for_bundle, saliency_map, train_and_export


class MedAITrainingLogic:
    """Headless Logic for training, fine-tuning and explaining models, bound to ``scene``."""

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else get_scene()
        self.last_info: dict = {}

    def _case(self, volume_node, label_node):
        bridge.require_scalar_volume(volume_node)
        image = bridge.volume_to_sitk(volume_node)
        reference = bridge.volume_geometry(volume_node)
        if label_node is None:
            raise ValueError(f"'{volume_node.GetName()}' has no segmentation: give one label node per volume.")
        if label_node.IsA("vtkMRMLSegmentationNode"):
            labels, geometry, infos = bridge.labelmap_from_segmentation(label_node, reference=reference)
            names = {info.label: info.name for info in infos}
        elif label_node.IsA("vtkMRMLScalarVolumeNode"):
            labels, geometry = bridge.array_from_volume(label_node)
            labels = bridge.resample_array(labels, geometry, reference, interpolator=sitk.sitkNearestNeighbor) \
                if not geometry.same_grid(reference, 1e-3) else labels
            geometry, names = reference, {}
        else:
            raise ValueError(f"'{label_node.GetName()}' is neither a segmentation nor a label map volume.")
        label_image = bridge.array_to_sitk(np.asarray(labels).astype(np.uint8), geometry)
        return (image, label_image), names

    def train(self, volume_nodes, label_nodes, bundle_dir, config: TrainingConfig | None = None, init_bundle=None,
              device: str = "auto", progress=None, on_epoch=None, table_node=None) -> TrainingResult:
        """Train (or fine-tune from ``init_bundle``) on pairs of volume and segmentation/label-map nodes
        and export a MONAI bundle to ``bundle_dir``. A table node '<bundle> training curves' (epoch,
        loss, val_dice) is created or updated; ``self.last_info`` has the figures."""
        volumes = list(volume_nodes) if isinstance(volume_nodes, (list, tuple)) else [volume_nodes]
        labels = list(label_nodes) if isinstance(label_nodes, (list, tuple)) else [label_nodes]
        if not volumes or len(volumes) != len(labels):
            raise ValueError(f"Give one segmentation per volume ({len(volumes)} volumes, {len(labels)} "
                             "segmentations).")
        progress = progress if progress is not None else Progress()
        config = config or TrainingConfig()
        cases, names = [], {}
        for volume, label in zip(volumes, labels):
            case, case_names = self._case(volume, label)
            cases.append(case)
            names.update(case_names)
        config.labels = {**names, **config.labels}
        torch_device = select_device(device)
        progress.update("training", 0.0)
        result = train_and_export(cases, bundle_dir, config, init_bundle=init_bundle, device=torch_device,
                                  progress=progress, on_epoch=on_epoch, name=Path(bundle_dir).name)
        columns = {key: [row[key] for row in result.history] for key in ("epoch", "loss", "val_dice")}
        table = bridge.create_table(self.scene, columns, f"{Path(bundle_dir).name} training curves", node=table_node)
        self.last_info = {"best_val_dice": result.best_dice, "best_epoch": result.best_epoch,
                          "epochs_run": result.epochs_run, "stopped": result.stopped, "seconds": result.seconds,
                          "device": str(torch_device), "files": result.files, "table": table.GetID()}
        progress.update("done", 1.0)
        return result

    def fine_tune_on_case(self, volume_node, segmentation_node, bundle, output_bundle, epochs: int = 20,
                          device: str = "auto", progress=None) -> TrainingResult:
        """"Fine-tune on this case": a few epochs from ``bundle`` on one corrected case, written to
        ``output_bundle`` (no validation split: the score is 1 - training loss)."""
        config = TrainingConfig(epochs=epochs, val_fraction=0.0, learning_rate=5e-4, patience=epochs)
        return self.train([volume_node], [segmentation_node], output_bundle, config, init_bundle=bundle,
                          device=device, progress=progress)

    def explain(self, volume_node, bundle, segment_name: str | None = None, output_node=None,
                device: str = "auto"):
        """Saliency volume '<input> saliency <segment>' (0..1 on the input's grid) for a segment of
        ``bundle`` (default: its first label)."""
        from .bundle import bundle_labels, bundle_metadata

        bridge.require_scalar_volume(volume_node)
        segments = bundle_labels(bundle_metadata(bundle))
        if not segments:
            raise ValueError(f"{bundle} lists no labels in configs/metadata.json.")
        chosen = segments[0] if segment_name is None else next((s for s in segments if s.name == segment_name), None)
        if chosen is None:
            raise ValueError(f"Segment {segment_name!r} is not in {bundle}; choose one of {[s.name for s in segments]}.")
        from .export import load_bundle_network

        network, _, metadata = load_bundle_network(bundle)
        image = bridge.volume_to_sitk(volume_node)
        tensor, affine = preprocess_for_bundle(image, bundle, with_affine=True)
        roi = metadata.get("medai", {}).get("roi", [64, 64, 64])
        saliency = saliency_map(network, tensor, chosen.value, roi, device=select_device(device))
        geometry = Geometry.from_ijk_to_physical(affine, "RAS", saliency.shape[::-1])
        reference = bridge.volume_geometry(volume_node)
        array = bridge.resample_array(np.ascontiguousarray(saliency.transpose(2, 1, 0)), geometry, reference)
        name = f"{volume_node.GetName()} saliency {chosen.name}"
        node = bridge.create_volume(self.scene, array.astype(np.float32), reference, name, node=output_node)
        self.last_info = {"segment": chosen.name, "label": chosen.value}
        return node
