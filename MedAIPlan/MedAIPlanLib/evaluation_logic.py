"""Plan evaluation Logic: DVH and dose metrics, gamma, isodose, DICOM-RT import/export, on MRML nodes.

Outputs follow SlicerRT's conventions: one DVH table per structure plus a metrics table and a plot
chart; a gamma volume (attribute ``DoseComparison.GammaVolume``, 0 outside the analysed region)
with its pass rate; dose volumes marked with :func:`dose_volume.mark_as_dose_volume`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates
from vtk.util.numpy_support import vtk_to_numpy

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.devices import select_device
from MedAICommonLib.progress import Progress
from MedAICommonLib.runtime import get_scene

from . import dicom_rt, dicom_rt_export, dose_metrics, dvh, gamma, isodose, plan_report, rtplan_beams
from .beams import make_beams
from .dose_volume import mark_as_dose_volume

PLANAR_CONTOUR = "Planar contour"


@dataclass
class DvhResult:
    """DVH outputs: per-structure tables, the metrics table and chart nodes, and the metrics as numbers."""

    tables: dict
    metrics_table: object
    chart: object
    combined_table: object
    metrics: dict = field(default_factory=dict)


def _polydata_from_contours(contours_lps: list[np.ndarray]):
    """A planar-contour polydata (RAS points, one closed line cell per contour) from LPS contours."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    points = np.concatenate(contours_lps) * np.array([-1.0, -1.0, 1.0])
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_to_vtk(np.ascontiguousarray(points), deep=True))
    lines = vtk.vtkCellArray()
    start = 0
    for c in contours_lps:
        ids = list(range(start, start + len(c))) + [start]
        lines.InsertNextCell(len(ids), ids)
        start += len(c)
    poly = vtk.vtkPolyData()
    poly.SetPoints(vtk_points)
    poly.SetLines(lines)
    return poly


def _contours_from_polydata(poly) -> list[np.ndarray]:
    """Closed contours ((N, 3) RAS points) from a planar-contour polydata (one line cell each)."""
    if poly is None or poly.GetNumberOfPoints() == 0:
        return []
    points = vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    lines = poly.GetLines()
    offsets = vtk_to_numpy(lines.GetOffsetsArray()).astype(int)
    conn = vtk_to_numpy(lines.GetConnectivityArray()).astype(int)
    contours = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        ids = conn[a:b]
        if len(ids) > 1 and ids[0] == ids[-1]:
            ids = ids[:-1]
        if len(ids) >= 3:
            contours.append(points[ids])
    return contours


def _slice_indices(shape_kji, center_kji, view: str) -> np.ndarray:
    """KJI indices (rows, cols, 3) of the axial (K fixed), coronal (J fixed) or sagittal (I fixed) plane."""
    k, j, i = (np.arange(n) for n in shape_kji)
    if view == "axial":
        jj, ii = np.meshgrid(j, i, indexing="ij")
        return np.stack([np.full_like(jj, center_kji[0]), jj, ii], axis=-1)
    if view == "coronal":
        kk, ii = np.meshgrid(k, i, indexing="ij")
        return np.stack([kk, np.full_like(kk, center_kji[1]), ii], axis=-1)
    kk, jj = np.meshgrid(k, j, indexing="ij")
    return np.stack([kk, jj, np.full_like(kk, center_kji[2])], axis=-1)


class PlanEvaluationLogic:
    """Evaluate dose volumes against structures and each other; move plans in and out as DICOM-RT."""

    def __init__(self, scene=None, progress: Progress | None = None):
        self.scene = scene if scene is not None else get_scene()
        self.progress = progress or Progress()

    # --- DVH -----------------------------------------------------------------------------
    def structure_samples(self, dose_node, segmentation_node, segment_names=None, oversampling: int = 2):
        """``{segment name: DoseSamples}``: planar contours when the segment has them, else its voxels."""
        bridge.require_scalar_volume(dose_node, "dose volume")
        bridge.require_segmentation(segmentation_node, "structure set")
        dose, geometry = bridge.array_from_volume(dose_node)
        segmentation = segmentation_node.GetSegmentation()
        infos = bridge.segment_infos(segmentation_node)
        names = [s.name for s in infos] if segment_names is None else list(segment_names)
        missing = [n for n in names if n not in {s.name for s in infos}]
        if missing:
            raise ValueError(f"Segment(s) {missing} not found in '{segmentation_node.GetName()}'; "
                             f"available: {[s.name for s in infos]}")
        samples = {}
        for i, name in enumerate(names):
            self.progress.update(f"DVH {name}", i / max(len(names), 1))
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
            contours = _contours_from_polydata(segment.GetRepresentation(PLANAR_CONTOUR)) if segment else []
            if contours:
                samples[name] = dvh.contour_samples(contours, dose, geometry)
                points = np.concatenate(contours)
            else:
                mask, mask_geometry = bridge.segment_mask(segmentation_node, name)
                samples[name] = dvh.mask_samples(dose, geometry, mask, mask_geometry, oversampling)
                points = mask_geometry.index_to_point(np.argwhere(mask)[::max(1, int(mask.sum()) // 5000), ::-1])
            if len(points) and dvh.fraction_inside_grid(geometry.with_shape(dose.shape), points) == 0.0:
                samples[name] = dvh.DoseSamples(np.zeros(0), np.zeros(0))  # entirely off the dose grid
        return samples

    def compute_dvh(self, dose_node, segmentation_node, segment_names=None, v_doses_gy=(),
                    bin_width_gy: float = 0.05, prescription_gy: float | None = None,
                    target_segment: str | None = None, body_segment: str | None = None,
                    oversampling: int = 2, existing: DvhResult | None = None) -> DvhResult:
        """DVH tables (one per structure + a combined one), a metrics table and a plot chart.

        With ``prescription_gy`` and ``target_segment``, Paddick CI, ICRU-83 HI and the gradient index
        are added (PIV from ``body_segment`` samples, or from the dose grid voxels without one).
        """
        samples = self.structure_samples(dose_node, segmentation_node, segment_names, oversampling)
        if not any(len(s.dose) for s in samples.values()):
            raise ValueError("None of the structures overlaps the dose grid; check that they share a frame of reference.")
        top = max(float(s.dose.max()) for s in samples.values() if len(s.dose))
        curves = {name: dvh.compute_dvh(s, bin_width_gy, top) for name, s in samples.items()}
        metrics = {name: dose_metrics.structure_metrics(s, tuple(v_doses_gy)) for name, s in samples.items()}
        plan_indices = {}
        if prescription_gy and target_segment:
            if target_segment not in samples:
                raise ValueError(f"Target '{target_segment}' is not among the evaluated structures "
                                 f"({', '.join(samples)}); give one of these names.")
            target = samples[target_segment]
            plan_indices["HI_ICRU83"] = dose_metrics.homogeneity_index(target)
            if body_segment and body_segment in samples:
                body = samples[body_segment]
                plan_indices["CI_Paddick"] = dose_metrics.paddick_conformity_index(target, body, prescription_gy)
                plan_indices["GI_Paddick"] = dose_metrics.gradient_index(body, prescription_gy)
            else:
                dose, geometry = bridge.array_from_volume(dose_node)
                voxel = float(np.prod(geometry.spacing))
                piv = dose_metrics.grid_volume_at_dose_cc(dose, voxel, prescription_gy)
                tv_piv, _ = dose_metrics.volume_at_dose(target, prescription_gy)
                plan_indices["CI_Paddick"] = tv_piv ** 2 / (target.volume_cc * piv) if piv > 0 else 0.0
                half = dose_metrics.grid_volume_at_dose_cc(dose, voxel, 0.5 * prescription_gy)
                plan_indices["GI_Paddick"] = half / piv if piv > 0 else float("inf")
        dose_name = dose_node.GetName()
        tables = {}
        for name, curve in curves.items():
            node = (existing.tables.get(name) if existing else None)
            tables[name] = bridge.create_table(self.scene, {
                "Dose (Gy)": curve.dose_gy, "Volume (%)": curve.cumulative_percent,
                "Volume (cc)": curve.cumulative_cc, "Differential (cc)": curve.differential_cc},
                f"{dose_name} DVH {name}", node=node)
        n_bins = max(len(c.dose_gy) for c in curves.values())
        combined = {"Dose (Gy)": np.arange(n_bins) * bin_width_gy}
        for name, curve in curves.items():
            combined[f"{name} (%)"] = np.pad(curve.cumulative_percent, (0, n_bins - len(curve.dose_gy)))
        combined_table = bridge.create_table(self.scene, combined, f"{dose_name} DVH",
                                             node=existing.combined_table if existing else None)
        keys = sorted({k for m in metrics.values() for k in m})
        columns = {"Structure": list(metrics)}
        for key in keys:
            columns[key] = [float(m.get(key, float("nan"))) for m in metrics.values()]
        metrics_table = bridge.create_table(self.scene, columns, f"{dose_name} DVH metrics",
                                            node=existing.metrics_table if existing else None)
        for key, value in plan_indices.items():
            metrics_table.SetAttribute(f"MedAI.{key}", repr(float(value)))
        chart = bridge.create_plot_chart(self.scene, combined_table, "Dose (Gy)",
                                         [c for c in combined if c != "Dose (Gy)"], f"{dose_name} DVH chart",
                                         x_title="Dose (Gy)", y_title="Volume (%)",
                                         chart=existing.chart if existing else None)
        self.progress.update("DVH", 1.0)
        all_metrics = {name: m for name, m in metrics.items()}
        all_metrics.update({"plan": plan_indices} if plan_indices else {})
        return DvhResult(tables, metrics_table, chart, combined_table, all_metrics)

    # --- plan report -----------------------------------------------------------------------
    def write_report(self, path, dose_node, dvh_result: DvhResult, ct_node=None, title: str | None = None,
                     isodose_levels_gy=(), info: dict | None = None) -> Path:
        """Write the plan report for ``dose_node`` and a :meth:`compute_dvh` result: a multi-page PDF
        (summary + metric table, axial/coronal/sagittal dose overlays through the dose maximum, DVH) when
        ``path`` ends in .pdf, else a one-page PNG. ``ct_node`` (optional) is sampled on the dose grid."""
        dose, geometry = bridge.array_from_volume(dose_node)
        curves = {}
        for name, table in dvh_result.tables.items():
            cols = bridge.columns_from_table(table)
            curves[name] = (np.asarray(cols["Dose (Gy)"]), np.asarray(cols["Volume (%)"]))
        metrics = {n: m for n, m in dvh_result.metrics.items() if n != "plan"}
        # Views in patient axes (Superior, Anterior, Right) through the dose maximum.
        perm, flips = plan_report.sar_orientation(geometry.to_space("RAS").direction)
        view = np.flip(np.transpose(dose, perm), flips)
        spacing_kji = np.array(geometry.spacing)[::-1][perm]
        center = np.unravel_index(int(np.argmax(view)), view.shape)
        ct = None
        if ct_node is not None:
            ct_array, ct_geometry = bridge.array_from_volume(ct_node)
            ct_geometry = ct_geometry.to_space(geometry.space)
            ct = {}
            for name in ("axial", "coronal", "sagittal"):  # CT (HU, -1000 outside) at the dose voxel centres
                idx = _slice_indices(view.shape, center, name)  # (rows, cols, 3) in the view's KJI
                orig = np.empty_like(idx)
                for o in range(3):
                    orig[..., perm[o]] = view.shape[o] - 1 - idx[..., o] if o in flips else idx[..., o]
                points = geometry.index_to_point(orig.reshape(-1, 3)[:, ::-1].astype(float))
                ijk = ct_geometry.point_to_index(points)
                values = map_coordinates(np.asarray(ct_array, float), ijk[:, ::-1].T, order=1, mode="constant", cval=-1000.0)
                ct[name] = values.reshape(idx.shape[:2])
        title = title or f"{dose_node.GetName()} plan report"
        path = Path(path)
        self.progress.update("Plan report", 0.5)
        if path.suffix.lower() == ".pdf":
            out, _ = plan_report.write_plan_report_pdf(
                path, view, spacing_kji[::-1], curves, metrics, ct=ct, center_kji=center, title=title,
                isodose_levels_gy=tuple(isodose_levels_gy), plan_indices=dvh_result.metrics.get("plan"), info=info)
        else:
            out = plan_report.write_plan_report(
                path, ct["axial"][::-1, ::-1] if ct else np.zeros_like(view[center[0]]), view[center[0]][::-1, ::-1],
                curves, metrics,
                title=title, isodose_levels_gy=tuple(isodose_levels_gy), plan_indices=dvh_result.metrics.get("plan"))
        self.progress.update("Plan report", 1.0)
        return out

    # --- gamma ---------------------------------------------------------------------------
    def gamma(self, reference_node, evaluated_node, dose_percent: float = 3.0, dta_mm: float = 3.0,
              threshold_percent: float = 10.0, local: bool = False, max_gamma: float = 2.0,
              normalization_dose_gy: float | None = None, step_mm: float | None = None,
              device: str = "auto", output_node=None):
        """Gamma volume of ``evaluated_node`` vs ``reference_node`` on the reference grid, and its result.

        Voxels below the threshold are 0 in the volume (as SlicerRT); the pass rate counts the others.
        """
        bridge.require_scalar_volume(reference_node, "reference dose")
        bridge.require_scalar_volume(evaluated_node, "evaluated dose")
        bridge.require_overlap(reference_node, evaluated_node, "reference and evaluated doses")
        ref, ref_geo = bridge.array_from_volume(reference_node)
        ev, ev_geo = bridge.array_from_volume(evaluated_node)
        torch_device = select_device(device)
        result = gamma.gamma_index(ref, ref_geo, ev, ev_geo, dose_percent, dta_mm, threshold_percent, local,
                                   max_gamma, normalization_dose_gy, step_mm, torch_device,
                                   progress=lambda f: self.progress.update("gamma", f))
        volume = np.nan_to_num(result.gamma, nan=0.0).astype(np.float32)
        node = bridge.create_volume(self.scene, volume, ref_geo, f"{evaluated_node.GetName()} gamma",
                                    node=output_node)
        node.SetAttribute("DoseComparison.GammaVolume", "1")
        node.SetAttribute("MedAI.GammaPassRate", repr(result.pass_rate))
        return node, result

    # --- isodose -------------------------------------------------------------------------
    def isodose(self, dose_node, levels=isodose.DEFAULT_LEVELS_PERCENT, prescription_gy: float | None = None,
                percent: bool = True, smooth: bool = False, existing_models=None):
        """Isodose surface model nodes (one per level reached) and a legend table node."""
        bridge.require_scalar_volume(dose_node, "dose volume")
        dose, geometry = bridge.array_from_volume(dose_node)
        if percent and prescription_gy is None:
            prescription_gy = float(dose.max())
        lv = isodose.isodose_levels(levels, prescription_gy, percent)
        surfaces = []
        for i, level in enumerate(lv):
            self.progress.update("isodose", i / len(lv))
            surfaces.append((level, isodose.isodose_surface(dose, geometry, level.dose_gy, smooth)))
        existing_models = list(existing_models or [])
        models = []
        for level, poly in surfaces:
            if poly.GetNumberOfPoints() == 0:
                continue
            node = existing_models.pop(0) if existing_models else None
            models.append(bridge.create_model(self.scene, poly, f"{dose_node.GetName()} isodose {level.label}",
                                              node=node, color=level.color))
        legend = bridge.create_table(self.scene, isodose.legend_rows(lv), f"{dose_node.GetName()} isodose legend")
        return models, legend, lv

    # --- DICOM-RT ------------------------------------------------------------------------
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
        segmentation = node.GetSegmentation()
        for roi in rois:
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(roi.name))
            if segment is not None:
                segment.AddRepresentation(PLANAR_CONTOUR, _polydata_from_contours(roi.contours))
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
