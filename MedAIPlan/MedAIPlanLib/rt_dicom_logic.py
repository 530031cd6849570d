"""DICOM-RT on MRML nodes: RTDOSE, RTSTRUCT (with its planar contours) and RTPLAN in and out.

:class:`RtDicomLogic` is mixed into :class:`evaluation_logic.PlanEvaluationLogic` (it needs ``scene`` and
``progress``); the file formats themselves are in :mod:`dicom_rt` and :mod:`dicom_rt_export`. Imported
doses are marked as SlicerRT marks dose volumes; exported objects share one study and frame of
reference and reference each other (RTPLAN -> RTSTRUCT, RTDOSE -> RTPLAN).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import create_segmentation_from_masks, reference_geometry, segment_masks
from MedAICommonLib.notices import warn

from MedAIPlanLib.dicomrt import dicom_rt, dicom_rt_export, rtplan_beams
from MedAIPlanLib.dose.beams import make_beams
from MedAIPlanLib.evaluation.dose_volume import mark_as_dose_volume
from MedAIPlanLib.evaluation.dvh import contour_volume_cc
from MedAIPlanLib.plan_settings import PlanSettings

VOLUME_TOLERANCE = 0.05
"""Relative difference between an ROI's rasterised volume and its contours' volume above which import warns."""


def _unique_names(rois: list[dicom_rt.RtRoi]) -> list[dicom_rt.RtRoi]:
    """The ROIs with repeated names made unique ("name (2)", with a warning), so that none is lost."""
    seen: dict[str, int] = {}
    out = []
    for roi in rois:
        count = seen.get(roi.name, 0) + 1
        seen[roi.name] = count
        if count > 1:
            new_name = f"{roi.name} ({count})"
            warn(f"RTSTRUCT ROI name '{roi.name}' is repeated (ROI {roi.number}); imported as '{new_name}'.")
            roi = replace(roi, name=new_name)
        out.append(roi)
    return out


def _check_volume(roi: dicom_rt.RtRoi, mask: np.ndarray, grid) -> None:
    """Warn when an ROI's rasterised volume is off its contours' volume by more than VOLUME_TOLERANCE."""
    expected = contour_volume_cc(roi.contours)
    got = float(mask.sum()) * float(np.prod(grid.spacing)) / 1000.0
    if expected > 0 and abs(got - expected) > VOLUME_TOLERANCE * expected:
        warn(
            f"RTSTRUCT ROI '{roi.name}': {got:.3g} cc on the import grid vs {expected:.3g} cc inside its contours "
            f"({100.0 * (got - expected) / expected:+.0f} %); import on a finer grid (pixel size) or on a "
            "reference volume that covers the whole structure."
        )


def rtstruct_of_segmentation(node, study_uid: str | None = None, frame_of_reference_uid: str | None = None):
    """An RTSTRUCT dataset with one ROI per segment of ``node`` (every layer, overlaps kept, in segment order).

    With a reference geometry (the usual case) masks are read one segment at a time, so a CT-sized mask
    at a time is in memory however many segments there are; without one, all at once. Empty segments
    are written as ROIs without contours, with a warning; repeated segment names are refused (an ROI is
    found by its name).
    """
    bridge.require_segmentation(node)
    infos = bridge.segment_infos(node)
    names = [s.name for s in infos]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"Segment name(s) {repeated} repeat in '{node.GetName()}'; give every segment its own "
            "name before the RTSTRUCT export, so that each becomes its own ROI."
        )
    geometry = reference_geometry(node) if node.GetParentTransformNode() is None else None
    if geometry is None or min(geometry.shape_kji) <= 0:  # no fixed grid: the union of all segments, read at once
        masks, geometry = segment_masks(node)
    else:
        masks = None

    def rois():
        for info in infos:
            mask = masks[info.name] if masks is not None else segment_masks(node, geometry, [info.name])[0][info.name]
            if not mask.any():
                warn(
                    f"Segment '{info.name}' of '{node.GetName()}' is empty; it is written as an RTSTRUCT ROI "
                    "without contours."
                )
            yield info.name, info.color, mask

    return dicom_rt_export.rtstruct_from_masks(
        rois(), geometry, study_uid=study_uid, frame_of_reference_uid=frame_of_reference_uid, label=node.GetName()
    )


class RtDicomLogic:
    """Import and export of DICOM-RT objects to and from MRML nodes (a mixin: ``self.scene``, ``self.progress``)."""

    def import_rtdose(self, path, name: str | None = None):
        """Load an RTDOSE file into a dose volume node (Gy, marked as dose as SlicerRT does)."""
        rd = dicom_rt.read_rtdose(path)
        geometry = rd.geometry.to_space("RAS")
        node = bridge.create_volume(self.scene, rd.dose, geometry, name or Path(path).stem)
        mark_as_dose_volume(node, "Gy" if rd.units == "GY" else rd.units, rd.scaling)
        return node

    def import_rtstruct(self, path, reference_node=None, pixel_mm: float = 1.0, name: str | None = None):
        """Load an RTSTRUCT into a segmentation node with one segment per ROI, in the file's order.

        Contours are rasterised on ``reference_node``'s grid (axial or oblique: voxel centres tested in
        contour space) or on an axial grid of ``pixel_mm`` with one slice per contour plane. Each ROI keeps
        its own mask (overlapping and nested ROIs are all kept, in as many layers as they need) and its
        contours (SlicerRT's "Planar contour" representation, for exact DVHs). An ROI without closed
        planar contours becomes an empty segment, a repeated name gets a suffix, and a rasterised volume
        off its contours' volume by more than 5 % is flagged: each with a warning.
        """
        rois = _unique_names(dicom_rt.read_rtstruct(path))
        contoured = [r for r in rois if r.contours]
        if not contoured:
            raise ValueError(f"{path} has no closed planar contours to import.")
        if reference_node is not None:
            grid = bridge.volume_geometry(reference_node).to_space("LPS")
        else:
            grid = dicom_rt.contour_grid([r.contours for r in contoured], pixel_mm)
        masks = {}
        for n, roi in enumerate(rois):
            self.progress.update(f"RTSTRUCT {roi.name}", (n + 1) / (len(rois) + 1))
            if roi.contours:
                masks[roi.name] = dicom_rt.rasterize_contours(roi.contours, grid)
                _check_volume(roi, masks[roi.name], grid)
            else:
                masks[roi.name] = np.zeros(grid.shape_kji, dtype=bool)
                warn(
                    f"RTSTRUCT ROI '{roi.name}' has no closed planar contours"
                    + (f" (only {len(roi.points)} point contours)" if roi.points else "")
                    + "; it is kept as an empty segment."
                )
        colors = {r.name: r.color for r in rois if r.color is not None}
        node = create_segmentation_from_masks(
            self.scene,
            masks,
            grid.to_space("RAS"),
            name or Path(path).stem,
            colors=colors,
            reference_volume=reference_node,
        )
        for roi in contoured:
            bridge.set_planar_contours(node, roi.name, roi.contours)
        return node

    def structure_volumes_cc(self, segmentation_node) -> dict[str, float]:
        """Volume (cc) of every segment of ``segmentation_node`` (every layer; overlaps counted in each)."""
        masks, geometry = segment_masks(segmentation_node)
        voxel_cc = float(np.prod(geometry.spacing)) / 1000.0
        return {segment_name: float(mask.sum()) * voxel_cc for segment_name, mask in masks.items()}

    def import_rtplan(self, path, name: str | None = None):
        """Load the beams of an RTPLAN into a table node (one row per beam); returns (table, plan dict)."""
        plan = dicom_rt.read_rtplan(path)
        beams = plan["beams"]
        columns = {
            "Beam": [b.name for b in beams],
            "Gantry (deg)": [b.gantry_deg for b in beams],
            "Couch (deg)": [b.couch_deg for b in beams],
            "Collimator (deg)": [b.collimator_deg for b in beams],
            "Isocenter R (mm)": [-b.isocenter_lps[0] for b in beams],
            "Isocenter A (mm)": [-b.isocenter_lps[1] for b in beams],
            "Isocenter S (mm)": [b.isocenter_lps[2] for b in beams],
            "MU": [b.meterset_mu if b.meterset_mu is not None else float("nan") for b in beams],
            "Energy (MV)": [b.energy_mv if b.energy_mv is not None else float("nan") for b in beams],
            "SAD (mm)": [b.sad_mm for b in beams],
        }
        table = bridge.create_table(self.scene, columns, name or f"{plan['label'] or Path(path).stem} beams")
        return table, plan

    def export_rt(
        self, output_dir, dose_node=None, segmentation_node=None, beams=None, bits: int = 32, plan: dict | None = None
    ) -> dict:
        """Write RTDOSE / RTSTRUCT / RTPLAN (those given) sharing study and frame of reference; returns paths.

        ``beams`` are RTPLAN beam dicts (see :func:`dicom_rt_export.rtplan_dataset`); ``plan`` may hold
        ``prescription_gy``, ``fractions``, ``target`` (segment name: the plan's dose reference ROI) and
        ``label``. The RTPLAN references the RTSTRUCT and the RTDOSE; the RTDOSE references the RTPLAN.
        """
        if dose_node is None and segmentation_node is None and not beams:
            raise ValueError("Nothing to export: give a dose volume, a segmentation or beams.")
        plan = plan or {}
        out = Path(output_dir)
        study, frame = dicom_rt_export.generate_uid(), dicom_rt_export.generate_uid()
        paths = {}
        ss_uid = plan_uid = None
        target_roi = None
        datasets = {}
        if segmentation_node is not None:
            datasets["RTSTRUCT"] = rtstruct_of_segmentation(segmentation_node, study, frame)
            ss_uid = datasets["RTSTRUCT"].SOPInstanceUID
            names = [str(r.ROIName) for r in datasets["RTSTRUCT"].StructureSetROISequence]
            if plan.get("target") in names:
                target_roi = names.index(plan["target"]) + 1  # ROI numbers follow the segment order
        dose_uid = dicom_rt_export.generate_uid() if dose_node is not None else None
        if beams:
            datasets["RTPLAN"] = dicom_rt_export.rtplan_dataset(
                beams,
                label=plan.get("label") or "MedAI plan",
                fractions=int(plan.get("fractions") or 1),
                study_uid=study,
                frame_of_reference_uid=frame,
                structure_set_uid=ss_uid,
                prescription_gy=plan.get("prescription_gy"),
                target_roi_number=target_roi,
                dose_uid=dose_uid,
            )
            plan_uid = datasets["RTPLAN"].SOPInstanceUID
        if dose_node is not None:
            dose, geometry = bridge.array_from_volume(dose_node)
            ds = dicom_rt_export.rtdose_dataset(
                np.clip(dose, 0, None),
                geometry,
                study_uid=study,
                frame_of_reference_uid=frame,
                bits=bits,
                plan_uid=plan_uid,
            )
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = dose_uid
            datasets["RTDOSE"] = ds
        for modality, ds in datasets.items():
            paths[modality] = str(dicom_rt_export.write_dataset(ds, out / f"{modality}.dcm"))
        return paths

    def plan_beams(
        self,
        dose_node,
        segmentation_node,
        target: str | None = None,
        gantry_angles=None,
        couch_angles=None,
        isocenter_lps=None,
        bixel_width_mm: float | None = None,
        margin_mm: float = 0.0,
        sad_mm: float = 1000.0,
    ) -> list:
        """MedAI dose-engine beams of a plan, rebuilt as the engine builds them (:func:`beams.make_beams`:
        bixel grid covering the target's projection) from the given values or, for those not given, the
        plan dose node's ``MedAIPlan.*`` attributes (Target, GantryAngles, CouchAngles, IsocenterLPS,
        BixelWidthMm; :meth:`PlanSettings.from_node_attributes`) written by ``MedAIPlanLogic``. The target mask
        is taken on the dose node's grid."""
        recorded = PlanSettings.from_node_attributes(dose_node) if dose_node is not None else None
        target = target or (recorded.target if recorded else None)
        gantry = (
            list(gantry_angles) if gantry_angles is not None else (list(recorded.gantry_angles) if recorded else None)
        )
        if not target or not gantry:
            raise ValueError(
                "The plan's beams are unknown: give the target segment and gantry angles "
                "(or a dose node made by the MedAI plan step, which records them)."
            )
        couch = (
            list(couch_angles)
            if couch_angles is not None
            else (list(recorded.couch_angles) or None if recorded else None)
        )
        iso = isocenter_lps if isocenter_lps is not None else (recorded.isocenter_lps if recorded else None)
        width = bixel_width_mm or (recorded.bixel_width_mm if recorded else 5.0)
        _, geometry = bridge.array_from_volume(dose_node)
        mask, mask_geometry = bridge.segment_mask(segmentation_node, target, geometry)
        return make_beams(
            mask,
            mask_geometry.to_space("LPS"),
            gantry,
            couch,
            width,
            None if iso is None else np.asarray(iso, float),
            margin_mm,
            sad_mm,
        )

    def export_plan(
        self,
        output_dir,
        dose_node,
        segmentation_node,
        beams=None,
        weights=None,
        beam_of_bixel=None,
        meterset_mu=None,
        mu_per_weight: float = 1.0,
        energy_mv: float = 6.0,
        bits: int = 32,
        prescription_gy: float | None = None,
        fractions: int | None = None,
        target: str | None = None,
        **beam_options,
    ) -> dict:
        """Export a MedAI plan: RTSTRUCT, RTPLAN (beam geometry, jaws from the bixel field, metersets from
        the bixel ``weights`` x ``mu_per_weight`` or ``meterset_mu``, fraction group, prescription, references)
        and RTDOSE. ``beams``: MedAI beams (default: :meth:`plan_beams` with ``beam_options``)."""
        recorded = PlanSettings.from_node_attributes(dose_node)
        target = target or (recorded.target if recorded else None)
        if beams is None:
            beams = self.plan_beams(dose_node, segmentation_node, target=target, **beam_options)
        rt_beams = rtplan_beams.rtplan_beams_from_medai(
            beams, weights, beam_of_bixel, meterset_mu, mu_per_weight, energy_mv
        )
        plan = {
            "target": target,
            "label": dose_node.GetName(),
            "prescription_gy": prescription_gy
            if prescription_gy is not None
            else (recorded.prescription_gy if recorded else None),
            "fractions": fractions or (recorded.fractions if recorded else 1),
        }
        return self.export_rt(output_dir, dose_node, segmentation_node, rt_beams, bits, plan)
