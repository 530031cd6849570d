"""MedAIRegister Logic: registration between MRML nodes (volumes, surfaces, landmarks).

Every method computes first and creates/updates output nodes only on success. Results are transform
nodes that, set as the **moving node's parent**, align it with the fixed node (to-parent maps moving
RAS -> fixed RAS); saved with ``bridge.save_node`` their file holds ITK's fixed -> moving transform.
Each result node references its inputs ("fixed" and "moving" node references).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAICommonLib import bridge
from MedAICommonLib.progress import Progress
from MedAICommonLib.runtime import get_scene

from MedAIRegisterLib.pointsets import icp as icp_module
from MedAIRegisterLib.intensity import intensity_registration
from MedAIRegisterLib.pointsets import landmarks
from MedAIRegisterLib.intensity.intensity_backends import (DEVICES, choose_backend, keep_better_than_start, register_with_backend,
                                 resample_onto)
from MedAIRegisterLib.intensity.preset_choice import choose_preset

@dataclass
class RegistrationOutcome:
    """What the last run produced: metrics (numbers for reports) and the backend used."""

    metrics: dict = field(default_factory=dict)
    backend: str = ""
    itk_transform: object = None
    device: str = ""


class MedAIRegisterLogic:
    """Registration of MRML nodes; ``scene`` defaults to Slicer's scene or the headless one."""

    def __init__(self, scene=None, progress: Progress | None = None):
        self.scene = scene if scene is not None else get_scene()
        self.progress = progress or Progress()
        self.last = RegistrationOutcome()
        self.last_volume = None

    def _progress(self, progress) -> Progress:
        """The run's Progress: the ``progress=`` argument (a Progress or a ``(stage, fraction)`` callable), else
        the one given to the constructor (attribute ``self.progress``, kept for compatibility)."""
        if progress is None:
            return self.progress
        return progress if isinstance(progress, Progress) else Progress(progress)

    # ------------------------------------------------------------------ volumes
    def register_volumes(self, fixed_node, moving_node, transform_type: str = "rigid", preset: str = "auto",
                         device: str = "cpu", fixed_mask=None, moving_mask=None, output_transform_node=None,
                         output_volume_node=None, resample: bool = False, sampling_percentage: float | None = None,
                         metric: str | None = None, initial_transform_node=None, progress=None):
        """Register ``moving_node`` to ``fixed_node`` (scalar volumes) by intensity; returns the transform node.

        ``transform_type``: rigid, similarity, affine or bspline; ``preset``: "auto" (chosen from the volumes'
        DICOM modality or intensities, see ``preset_choice``) or a key of ``intensity_registration.PRESETS``;
        ``device``: see ``DEVICES``; masks: a label-map volume node or ``(segmentation_node, segment_name)`` on
        each side. With ``resample`` (or an ``output_volume_node``) the moving volume resampled onto the fixed
        grid is produced too, as ``self.last_volume``. ``sampling_percentage`` (fraction 0..1) and ``metric``
        (mattes, meansquares, correlation) override the preset (linear registrations with
        meansquares/correlation run on SimpleITK; the torch B-spline takes all three).
        ``initial_transform_node`` (linear, aligning moving to fixed like the result) starts the optimisation
        instead of the geometry centres. ``progress``: a ``Progress`` (Cancel) or ``(stage, fraction)`` callable.
        ``self.last.metrics`` holds the preset used and why, MI and NCC before (at the start: identity or the
        initial transform) and after, and the optimised metric before/after; a result that makes the optimised
        metric worse than the start is not returned: the start is kept, with a warning.
        ``self.last.backend`` is simpleitk, numba or torch.
        """
        progress = self._progress(progress)
        self._check_volumes(fixed_node, moving_node, initial_transform_node, device, metric, preset)
        progress.update("preparing", 0.0)
        fixed_image = bridge.volume_to_sitk(fixed_node)
        moving_image = bridge.volume_to_sitk(moving_node)
        preset, reason = self._resolve_preset(preset, fixed_node, moving_node, fixed_image, moving_image)
        backend, torch_device = choose_backend(device, transform_type, metric)
        start = sitk.AffineTransform(3)
        if initial_transform_node is not None:
            try:
                start = bridge.transform_node_to_sitk(initial_transform_node)
            except bridge.BridgeError as error:
                raise ValueError(f"The initial transform must be linear: {error}") from error
        sub = progress.sub(0.05, 0.85)
        result = register_with_backend(
            backend, torch_device, fixed_image, moving_image, transform_type, preset, metric=metric,
            sampling_percentage=sampling_percentage, initial=None if initial_transform_node is None else start,
            fixed_mask=self._mask_image(fixed_mask, fixed_node), moving_mask=self._mask_image(moving_mask, moving_node),
            progress=sub.update)
        progress.update("evaluating", 0.9)
        transform, after, metrics = keep_better_than_start(fixed_image, moving_image, start, result.transform,
                                                           metric or intensity_registration.PRESETS[preset].metric,
                                                           same_modality=preset == "ct-ct")
        metrics.update({"preset": preset, "preset_reason": reason, "final_metric_value": result.metric_value,
                        "registration_s": result.elapsed_s})
        # Outputs, only now that everything succeeded.
        transform_node = self._transform_node(transform, f"{moving_node.GetName()} registration",
                                              output_transform_node)
        bridge.set_fixed_moving_references(transform_node, fixed_node, moving_node)
        self.last_volume = None
        if resample or output_volume_node is not None:
            _, geometry = bridge.sitk_to_array(fixed_image)
            self.last_volume = bridge.create_volume(self.scene, after.astype(np.float32), geometry,
                                                    f"{moving_node.GetName()} registered", node=output_volume_node)
        self.last = RegistrationOutcome(metrics, backend, transform,
                                        "cpu" if backend != "torch" else str(torch_device))
        progress.update("done", 1.0)
        return transform_node

    @staticmethod
    def _check_volumes(fixed_node, moving_node, initial_transform_node, device, metric, preset) -> None:
        for node, role in ((fixed_node, "fixed volume"), (moving_node, "moving volume")):
            try:
                bridge.require_scalar_volume(node, role)
                bridge.require_volume_extent(node, 4, role)
            except bridge.BridgeError as error:
                raise ValueError(str(error)) from error
        if initial_transform_node is None:
            bridge.require_overlap(fixed_node, moving_node, "fixed and moving volumes")
        if device not in DEVICES:
            raise ValueError(f"Unknown device {device!r}; use one of {', '.join(DEVICES)}.")
        if metric is not None and metric not in intensity_registration.METRICS:
            raise ValueError(f"Unknown metric {metric!r}; use one of {', '.join(intensity_registration.METRICS)}.")
        if preset != "auto" and preset not in intensity_registration.PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; use auto or one of "
                             f"{', '.join(intensity_registration.PRESETS)}.")

    def _resolve_preset(self, preset, fixed_node, moving_node, fixed_image, moving_image) -> tuple[str, str]:
        """(preset, why): the given one, or for "auto" the one the volumes' modalities call for."""
        if preset != "auto":
            return preset, "given"
        return choose_preset(sitk.GetArrayViewFromImage(fixed_image), sitk.GetArrayViewFromImage(moving_image),
                             self._dicom_modality(fixed_node), self._dicom_modality(moving_node))

    def _dicom_modality(self, node) -> str:
        """The DICOM Modality of a volume node: its ``DICOM.Modality`` attribute or its subject hierarchy item's."""
        modality = node.GetAttribute("DICOM.Modality") or ""
        if not modality:
            import slicer

            hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
            if hierarchy is not None:
                item = hierarchy.GetItemByDataNode(node)
                modality = hierarchy.GetItemAttribute(item, "DICOM.Modality") if item else ""
        return modality or ""

    def _mask_image(self, mask, volume_node):
        if mask is None:
            return None
        if isinstance(mask, tuple):
            segmentation, segment = mask
            _, geometry = bridge.array_from_volume(volume_node)
            array, geometry = bridge.segment_mask(segmentation, segment, geometry)
            return bridge.array_to_sitk(array.astype(np.uint8), geometry)
        return bridge.volume_to_sitk(mask)

    _resample = staticmethod(resample_onto)  # moving onto the fixed grid through ITK's transform (KJI float32)

    def _transform_node(self, transform, name, node=None):
        """A transform node holding ITK's fixed -> moving ``transform`` (linear, or composite via a file)."""
        try:
            return bridge.sitk_to_transform_node(transform, self.scene, name, node)
        except bridge.BridgeError:
            pass
        # Deformable: let Slicer's own reader build the node from the ITK file.
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "transform.h5"
            sitk.WriteTransform(transform, str(path))
            loaded = bridge.load_transform(self.scene, path, name)
        storage = loaded.GetStorageNode()
        loaded.SetAndObserveStorageNodeID(None)
        if storage is not None:
            self.scene.RemoveNode(storage)
        if node is None:
            return loaded
        node.SetAndObserveTransformFromParent(loaded.GetTransformFromParent())
        self.scene.RemoveNode(loaded)
        return node

    # ------------------------------------------------------------------ carry data through
    def carry_through(self, node, transform_node, reference_volume, name: str | None = None, output_node=None):
        """Resample a volume (e.g. dose) or segmentation defined on the moving side onto the fixed grid of
        ``reference_volume`` through ``transform_node``; returns a new node (attributes of volumes kept)."""
        itk = self._itk_of(transform_node)
        _, reference = bridge.array_from_volume(reference_volume)
        name = name or f"{node.GetName()} registered"
        if node.IsA("vtkMRMLSegmentationNode"):
            labels, geometry, infos = bridge.labelmap_from_segmentation(node)
            moved = bridge.resample_array(labels, geometry, reference, sitk.sitkNearestNeighbor, 0, itk)
            return bridge.create_segmentation(self.scene, moved.astype(np.uint16), reference, infos, name,
                                              node=output_node)
        array, geometry = bridge.array_from_volume(node)
        moved = bridge.resample_array(array.astype(np.float32), geometry, reference, sitk.sitkLinear, 0.0, itk)
        out = bridge.create_volume(self.scene, moved, reference, name, labelmap=bridge.is_labelmap(node),
                                   node=output_node)
        for attribute in node.GetAttributeNames() or ():
            out.SetAttribute(attribute, node.GetAttribute(attribute))
        return out

    @staticmethod
    def _itk_of(transform_node):
        if transform_node.IsLinear():
            return bridge.transform_node_to_sitk(transform_node)
        with tempfile.TemporaryDirectory() as folder:
            path = bridge.save_node(transform_node, Path(folder) / "t.h5")
            return sitk.ReadTransform(str(path))

    # ------------------------------------------------------------------ surfaces (ICP)
    def surface_points(self, source) -> np.ndarray:
        """(N, 3) world RAS points of a model node, markups node or ``(segmentation_node, segment_name)``
        (segment surface by marching cubes on its binary label map; a bare segmentation node means its
        first segment)."""
        if source is not None and not isinstance(source, tuple) and source.IsA("vtkMRMLSegmentationNode"):
            infos = bridge.segment_infos(source)
            if not infos:
                raise ValueError(f"Segmentation '{source.GetName()}' has no segments; add one or pick a model.")
            source = (source, infos[0].name)
        if isinstance(source, tuple):
            segmentation, segment = source
            mask, geometry = bridge.segment_mask(segmentation, segment)
            if not mask.any():
                raise ValueError(f"Segment '{segment}' of '{segmentation.GetName()}' is empty.")
            from skimage.measure import marching_cubes

            padded = np.pad(mask.astype(np.float32), 1)
            vertices_kji, _, _, _ = marching_cubes(padded, 0.5)
            return geometry.to_space("RAS").index_to_point(vertices_kji[:, ::-1] - 1.0)
        if source is not None and source.IsA("vtkMRMLModelNode"):
            return bridge.points_from_polydata(bridge.polydata_from_model(source))
        if source is not None and source.IsA("vtkMRMLMarkupsNode"):
            return bridge.points_from_markups(source)
        raise ValueError("A surface must be a model node, a markups node or (segmentation node, segment name).")

    def register_surfaces(self, fixed, moving, metric: str = "point-to-plane", transform_type: str = "rigid",
                          trim_fraction: float | str | None = "auto", multi_start: str = "sphere",
                          output_transform_node=None, fixed_node=None, moving_node=None, progress=None,
                          units: str = "auto"):
        """ICP of the ``moving`` surface onto ``fixed`` (see :meth:`surface_points`); returns the transform node.

        ``units``: the unit of the surfaces' coordinates, "mm", "cm", "m" or "auto" (metres when both span
        less than 2 units, with a warning; else mm). ICP runs in mm; the transform stays in the surfaces' own
        units. Metrics (RMS and inlier distance in mm, inlier fraction, iterations, ``converged``: the iterations
        converged and the result passed ICP's checks) are in ``self.last.metrics``; ``trim_fraction`` and
        ``multi_start`` as in :func:`icp.icp`; ``progress`` as in :meth:`register_volumes`.
        """
        progress = self._progress(progress)
        progress.update("surfaces", 0.0)
        fixed_points, moving_points = self.surface_points(fixed), self.surface_points(moving)
        units, scale = icp_module.surface_units(fixed_points, moving_points, units)
        sub = progress.sub(0.05, 0.95)
        result = icp_module.icp(fixed_points * scale, moving_points * scale, metric=metric, transform=transform_type,
                                trim_fraction=trim_fraction, multi_start=multi_start,
                                progress=lambda f: sub.update("icp", f))
        matrix = result.matrix.copy()
        matrix[:3, 3] /= scale
        self.last = RegistrationOutcome({
            "rms_mm": result.rms_mm, "rms_all_mm": result.rms_all_mm, "inlier_fraction": result.inlier_fraction,
            "inlier_distance_mm": result.inlier_distance_mm, "iterations": result.iterations,
            "converged": bool(result.converged and result.reliable), "iterations_converged": result.converged,
            "reliable": result.reliable, "trim_fraction": result.trim_fraction, "start": result.start,
            "rival_angle_deg": result.rival_angle_deg, "units": units, "mm_per_unit": scale,
            "fixed_points": len(fixed_points), "moving_points": len(moving_points)}, "icp")
        name = f"{self._name(moving)} registration"
        node = bridge.create_linear_transform(self.scene, matrix, name, output_transform_node)
        bridge.set_fixed_moving_references(node, fixed_node or self._node(fixed), moving_node or self._node(moving))
        progress.update("done", 1.0)
        return node

    @staticmethod
    def _node(source):
        return source[0] if isinstance(source, tuple) else source

    def _name(self, source) -> str:
        return f"{source[0].GetName()}:{source[1]}" if isinstance(source, tuple) else source.GetName()

    # ------------------------------------------------------------------ landmarks
    def register_landmarks(self, fixed_markups, moving_markups, method: str = "rigid", output_transform_node=None,
                           progress=None):
        """Paired-landmark registration (rigid, similarity, affine, tps) of two markups nodes with the same
        number of points in the same order; returns the transform node. FRE per point and predicted TRE
        are in ``self.last.metrics``."""
        progress = self._progress(progress)
        progress.update("landmarks", 0.0)
        fixed_points = bridge.points_from_markups(fixed_markups)
        moving_points = bridge.points_from_markups(moving_markups)
        result = landmarks.fit_landmarks(moving_points, fixed_points, method)
        metrics = {"fre_mean_mm": result.fre_mean_mm, "fre_rms_mm": result.fre_rms_mm,
                   "fre_max_mm": float(result.residuals_mm.max()), "fre_per_point_mm": result.residuals_mm.tolist(),
                   "points": len(fixed_points)}
        if result.predicted_tre_mm is not None:
            metrics["predicted_tre_mm"] = result.predicted_tre_mm.tolist()
            metrics["predicted_tre_mean_mm"] = float(result.predicted_tre_mm.mean())
        name = f"{moving_markups.GetName()} registration"
        if method == "tps":
            # Slicer stores a TPS as from-parent (fixed RAS -> moving RAS), which it can write as ITK's
            # ThinPlateSplineKernelTransform; the to-parent is its inverse, computed by VTK on the fly.
            tps = landmarks.thin_plate_spline(fixed_points, moving_points)
            node = output_transform_node or self.scene.AddNewNodeByClass("vtkMRMLTransformNode", name)
            node.SetAndObserveTransformFromParent(tps)
        else:
            node = bridge.create_linear_transform(self.scene, result.matrix, name, output_transform_node)
        bridge.set_fixed_moving_references(node, fixed_markups, moving_markups)
        self.last = RegistrationOutcome(metrics, f"landmarks-{method}")
        progress.update("done", 1.0)
        return node
