"""DICOM-RT on MRML nodes: RTDOSE, RTSTRUCT (with its planar contours) and RTPLAN in and out.

:class:`RtDicomLogic` is mixed into :class:`evaluation_logic.PlanEvaluationLogic` (it needs ``scene`` and
``progress``); the file formats themselves are in :mod:`dicom_rt` and :mod:`dicom_rt_export`. Imported
doses are marked as SlicerRT marks dose volumes; exported objects share one study and frame of
reference and reference each other (RTPLAN -> RTSTRUCT, RTDOSE -> RTPLAN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo

from . import dicom_rt, dicom_rt_export, rtplan_beams
from .beams import make_beams
from .dose_volume import mark_as_dose_volume


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
        """Load an RTSTRUCT into a segmentation node, rasterising its contours on ``reference_node``'s
        grid (axial or oblique: voxel centres tested in contour space) or on an axial grid of ``pixel_mm``
        with one slice per contour plane."""
        rois = [r for r in dicom_rt.read_rtstruct(path) if r.contours]
        if not rois:
            raise ValueError(f"{path} has no closed planar contours to import.")
        if reference_node is not None:
            grid = bridge.volume_geometry(reference_node).to_space("LPS")
        else:
            grid = dicom_rt.contour_grid([r.contours for r in rois], pixel_mm)
        labels = np.zeros(grid.shape_kji, dtype=np.uint16)
        segments = []
        for value, roi in enumerate(rois, start=1):
            self.progress.update(f"RTSTRUCT {roi.name}", value / (len(rois) + 1))
            labels[dicom_rt.rasterize_contours(roi.contours, grid)] = value
            segments.append(SegmentInfo(value, roi.name, roi.color))
        node = bridge.create_segmentation(self.scene, labels, grid.to_space("RAS"), segments,
                                          name or Path(path).stem, reference_volume=reference_node)
        # Keep the original contours too (as SlicerRT's "Planar contour" representation) for exact DVHs.
        for roi in rois:
            bridge.set_planar_contours(node, roi.name, roi.contours)
        return node

    def import_rtplan(self, path, name: str | None = None):
        """Load the beams of an RTPLAN into a table node (one row per beam); returns (table, plan dict)."""
        plan = dicom_rt.read_rtplan(path)
        beams = plan["beams"]
        columns = {
            "Beam": [b.name for b in beams], "Gantry (deg)": [b.gantry_deg for b in beams],
            "Couch (deg)": [b.couch_deg for b in beams], "Collimator (deg)": [b.collimator_deg for b in beams],
            "Isocenter R (mm)": [-b.isocenter_lps[0] for b in beams],
            "Isocenter A (mm)": [-b.isocenter_lps[1] for b in beams],
            "Isocenter S (mm)": [b.isocenter_lps[2] for b in beams],
            "MU": [b.meterset_mu if b.meterset_mu is not None else float("nan") for b in beams],
            "Energy (MV)": [b.energy_mv if b.energy_mv is not None else float("nan") for b in beams],
            "SAD (mm)": [b.sad_mm for b in beams],
        }
        table = bridge.create_table(self.scene, columns, name or f"{plan['label'] or Path(path).stem} beams")
        return table, plan

    def export_rt(self, output_dir, dose_node=None, segmentation_node=None, beams=None, bits: int = 32,
                  plan: dict | None = None) -> dict:
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
            labels, geometry, infos = bridge.labelmap_from_segmentation(segmentation_node)
            datasets["RTSTRUCT"] = dicom_rt_export.rtstruct_dataset(
                labels, geometry, [(s.label, s.name, s.color) for s in infos], study_uid=study,
                frame_of_reference_uid=frame, label=segmentation_node.GetName())
            ss_uid = datasets["RTSTRUCT"].SOPInstanceUID
            names = [s.name for s in infos]
            if plan.get("target") in names:
                target_roi = names.index(plan["target"]) + 1  # ROI numbers follow the segment order
        dose_uid = dicom_rt_export.generate_uid() if dose_node is not None else None
        if beams:
            datasets["RTPLAN"] = dicom_rt_export.rtplan_dataset(
                beams, label=plan.get("label") or "MedAI plan", fractions=int(plan.get("fractions") or 1),
                study_uid=study, frame_of_reference_uid=frame, structure_set_uid=ss_uid,
                prescription_gy=plan.get("prescription_gy"), target_roi_number=target_roi, dose_uid=dose_uid)
            plan_uid = datasets["RTPLAN"].SOPInstanceUID
        if dose_node is not None:
            dose, geometry = bridge.array_from_volume(dose_node)
            ds = dicom_rt_export.rtdose_dataset(np.clip(dose, 0, None), geometry, study_uid=study,
                                                frame_of_reference_uid=frame, bits=bits, plan_uid=plan_uid)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = dose_uid
            datasets["RTDOSE"] = ds
        for modality, ds in datasets.items():
            paths[modality] = str(dicom_rt_export.write_dataset(ds, out / f"{modality}.dcm"))
        return paths

    def plan_beams(self, dose_node, segmentation_node, target: str | None = None, gantry_angles=None,
                   couch_angles=None, isocenter_lps=None, bixel_width_mm: float | None = None,
                   margin_mm: float = 0.0, sad_mm: float = 1000.0) -> list:
        """MedAI dose-engine beams of a plan, rebuilt as the engine builds them (:func:`beams.make_beams`:
        bixel grid covering the target's projection) from the given values or, for those not given, the
        plan dose node's ``MedAIPlan.*`` attributes (Target, GantryAngles, CouchAngles, IsocenterLPS,
        BixelWidthMm) written by ``MedAIPlanLogic``. The target mask is taken on the dose node's grid."""
        def attr(key):
            value = dose_node.GetAttribute(f"MedAIPlan.{key}") if dose_node is not None else None
            return value if value not in (None, "") else None

        def floats(text):
            return [float(v) for v in str(text).split(",") if v.strip()] if text is not None else None

        target = target or attr("Target")
        gantry = list(gantry_angles) if gantry_angles is not None else floats(attr("GantryAngles"))
        if not target or not gantry:
            raise ValueError("The plan's beams are unknown: give the target segment and gantry angles "
                             "(or a dose node made by the MedAI plan step, which records them).")
        couch = list(couch_angles) if couch_angles is not None else floats(attr("CouchAngles"))
        iso = isocenter_lps if isocenter_lps is not None else floats(attr("IsocenterLPS"))
        width = bixel_width_mm or (float(attr("BixelWidthMm")) if attr("BixelWidthMm") else 5.0)
        _, geometry = bridge.array_from_volume(dose_node)
        mask, mask_geometry = bridge.segment_mask(segmentation_node, target, geometry)
        return make_beams(mask, mask_geometry.to_space("LPS"), gantry, couch, width,
                          None if iso is None else np.asarray(iso, float), margin_mm, sad_mm)

    def export_plan(self, output_dir, dose_node, segmentation_node, beams=None, weights=None, beam_of_bixel=None,
                    meterset_mu=None, mu_per_weight: float = 1.0, energy_mv: float = 6.0, bits: int = 32,
                    prescription_gy: float | None = None, fractions: int | None = None, target: str | None = None,
                    **beam_options) -> dict:
        """Export a MedAI plan: RTSTRUCT, RTPLAN (beam geometry, jaws from the bixel field, metersets from
        the bixel ``weights`` x ``mu_per_weight`` or ``meterset_mu``, fraction group, prescription, references)
        and RTDOSE. ``beams``: MedAI beams (default: :meth:`plan_beams` with ``beam_options``)."""
        def attr(key):
            value = dose_node.GetAttribute(f"MedAIPlan.{key}")
            return value if value not in (None, "") else None

        target = target or attr("Target")
        if beams is None:
            beams = self.plan_beams(dose_node, segmentation_node, target=target, **beam_options)
        rt_beams = rtplan_beams.rtplan_beams_from_medai(beams, weights, beam_of_bixel, meterset_mu, mu_per_weight,
                                                        energy_mv)
        plan = {"target": target, "label": dose_node.GetName(),
                "prescription_gy": prescription_gy if prescription_gy is not None else
                (float(attr("PrescriptionGy")) if attr("PrescriptionGy") else None),
                "fractions": fractions or (int(float(attr("Fractions"))) if attr("Fractions") else 1)}
        return self.export_rt(output_dir, dose_node, segmentation_node, rt_beams, bits, plan)
