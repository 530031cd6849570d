"""Plan evaluation Logic: DVH and dose metrics, gamma, isodose, DICOM-RT import/export, on MRML nodes.

Outputs follow SlicerRT's conventions: one DVH table per structure plus a metrics table and a plot
chart; a gamma volume (attribute ``DoseComparison.GammaVolume``, 0 outside the analysed region)
with its pass rate; dose volumes marked with :func:`dose_volume.mark_as_dose_volume`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MedAICommonLib import bridge, notices
from MedAICommonLib.bridge.volumes import describe_bounds
from MedAICommonLib.devices import select_device
from MedAICommonLib.progress import Progress
from MedAICommonLib.runtime import get_scene

from MedAIPlanLib.evaluation import dose_metrics, dvh, isodose
from MedAIPlanLib.rt_dicom_logic import RtDicomLogic


@dataclass
class DvhResult:
    """DVH outputs: per-structure tables, the metrics table and chart nodes, and the metrics as numbers."""

    tables: dict
    metrics_table: object
    chart: object
    combined_table: object
    metrics: dict = field(default_factory=dict)


def _bounds_text(dose_node, segmentation_node) -> str:
    """Both extents in RAS mm: the dose grid's and the segmentation's (world bounds of its segments)."""
    bounds = [0.0] * 6
    segmentation_node.GetRASBounds(bounds)
    segments = ", ".join(f"{axis} {bounds[2 * n]:.1f}..{bounds[2 * n + 1]:.1f}" for n, axis in enumerate("RAS"))
    return (
        f"the dose spans {describe_bounds(bridge.volume_geometry(dose_node))}, the structures span {segments} (RAS mm)"
    )


def check_gamma_criteria(
    dose_percent: float,
    dta_mm: float,
    threshold_percent: float,
    max_gamma: float,
    normalization_dose_gy: float | None = None,
    step_mm: float | None = None,
) -> None:
    """``ValueError`` naming the first gamma criterion out of range (dose % and DTA mm > 0, threshold
    0..100 % exclusive of 100, max gamma > 0, normalisation dose and step > 0 when given)."""
    checks = [
        ("dose criterion (%)", dose_percent, 0.0 < dose_percent <= 100.0, "e.g. 3"),
        ("DTA criterion (mm)", dta_mm, dta_mm > 0.0, "e.g. 3"),
        (
            "low-dose threshold (% of the maximum)",
            threshold_percent,
            0.0 <= threshold_percent < 100.0,
            "from 0 to below 100, e.g. 10",
        ),
        ("max gamma", max_gamma, max_gamma > 0.0, "e.g. 2"),
    ]
    if normalization_dose_gy is not None:
        checks.append(("normalisation dose (Gy)", normalization_dose_gy, normalization_dose_gy > 0.0, "> 0"))
    if step_mm is not None:
        checks.append(("search step (mm)", step_mm, step_mm > 0.0, "> 0, e.g. DTA/10"))
    for what, value, ok, hint in checks:
        if not (np.isfinite(value) and ok):
            raise ValueError(f"The gamma {what} is {value:g}, which is out of range; give {hint}.")


def _plan_indices(
    dose_node, samples: dict, prescription_gy: float, target_segment: str, body_segment: str | None
) -> dict:
    """ICRU-83 HI, Paddick CI and the gradient index of ``target_segment`` at ``prescription_gy`` (Gy): the
    prescription isodose volumes from ``body_segment``'s samples, or from the dose grid's voxels without one."""
    if target_segment not in samples:
        raise ValueError(
            f"Target '{target_segment}' is not among the evaluated structures "
            f"({', '.join(samples)}); give one of these names."
        )
    target = samples[target_segment]
    plan_indices = {"HI_ICRU83": dose_metrics.homogeneity_index(target)}
    if body_segment and body_segment in samples:
        body = samples[body_segment]
        plan_indices["CI_Paddick"] = dose_metrics.paddick_conformity_index(target, body, prescription_gy)
        plan_indices["GI_Paddick"] = dose_metrics.gradient_index(body, prescription_gy)
    else:
        dose, geometry = bridge.array_from_volume(dose_node)
        voxel = float(np.prod(geometry.spacing))
        piv = dose_metrics.grid_volume_at_dose_cc(dose, voxel, prescription_gy)
        tv_piv, _ = dose_metrics.volume_at_dose(target, prescription_gy)
        plan_indices["CI_Paddick"] = tv_piv**2 / (target.volume_cc * piv) if piv > 0 else 0.0
        half = dose_metrics.grid_volume_at_dose_cc(dose, voxel, 0.5 * prescription_gy)
        plan_indices["GI_Paddick"] = half / piv if piv > 0 else float("inf")
    return plan_indices


class PlanEvaluationLogic(RtDicomLogic):
    """Evaluate dose volumes against structures and each other; move plans in and out as DICOM-RT."""

    def __init__(self, scene=None, progress: Progress | None = None):
        self.scene = scene if scene is not None else get_scene()
        self.progress = progress or Progress()

    # --- DVH -----------------------------------------------------------------------------
    def structure_samples(self, dose_node, segmentation_node, segment_names=None, oversampling: int = 2):
        """``{segment name: DoseSamples}``: planar contours when the segment has them, else its voxels."""
        bridge.require_scalar_volume(dose_node, "dose volume")
        bridge.require_volume_extent(dose_node, 2, "dose volume")
        bridge.require_segmentation(segmentation_node, "structure set")
        dose, geometry = bridge.array_from_volume(dose_node)
        infos = bridge.segment_infos(segmentation_node)
        names = [s.name for s in infos] if segment_names is None else list(segment_names)
        missing = [n for n in names if n not in {s.name for s in infos}]
        if missing:
            raise ValueError(
                f"Segment(s) {missing} not found in '{segmentation_node.GetName()}'; "
                f"available: {[s.name for s in infos]}"
            )
        grid = geometry.with_shape(dose.shape)
        samples = {}
        for i, name in enumerate(names):
            self.progress.update(f"DVH {name}", i / max(len(names), 1))
            samples[name] = self._segment_samples(dose, grid, segmentation_node, name, oversampling)
        return samples

    @staticmethod
    def _segment_samples(dose, grid, segmentation_node, name: str, oversampling: int) -> dvh.DoseSamples:
        """Samples of one segment; one that lies entirely off the dose grid is flagged and costs nothing."""
        contours = bridge.planar_contours(segmentation_node, name)
        if contours:
            points = np.concatenate(contours)
        else:
            mask, mask_geometry = bridge.segment_mask(segmentation_node, name)
            points = mask_geometry.index_to_point(np.argwhere(mask)[:: max(1, int(mask.sum()) // 5000), ::-1])
        inside = dvh.fraction_inside_grid(grid, points) if len(points) else 1.0
        if inside == 0.0:
            notices.warn(
                f"Structure '{name}' lies entirely outside the dose grid: it has no DVH (flagged "
                "outside_dose_grid); check that the dose and the structures share a frame of reference."
            )
            return dvh.DoseSamples(np.zeros(0), np.zeros(0), outside_dose_grid=True)
        if inside < 0.999:
            notices.warn(
                f"Structure '{name}' extends outside the dose grid ({100.0 * (1.0 - inside):.1f} % of its "
                "outline): that part counts as 0 Gy in its DVH."
            )
        if contours:
            return dvh.contour_samples(contours, dose, grid)
        return dvh.mask_samples(dose, grid, mask, mask_geometry, oversampling)

    def compute_dvh(
        self,
        dose_node,
        segmentation_node,
        segment_names=None,
        v_doses_gy=(),
        bin_width_gy: float = 0.05,
        prescription_gy: float | None = None,
        target_segment: str | None = None,
        body_segment: str | None = None,
        oversampling: int = 2,
        existing: DvhResult | None = None,
    ) -> DvhResult:
        """DVH tables (one per structure + a combined one), a metrics table and a plot chart.

        With ``prescription_gy`` and ``target_segment``, Paddick CI, ICRU-83 HI and the gradient index
        are added (PIV from ``body_segment`` samples, or from the dose grid voxels without one).
        """
        samples = self.structure_samples(dose_node, segmentation_node, segment_names, oversampling)
        if not any(len(s.dose) for s in samples.values()):
            raise ValueError(
                f"None of the structures of '{segmentation_node.GetName()}' overlaps the dose grid "
                f"'{dose_node.GetName()}': {_bounds_text(dose_node, segmentation_node)}; check that "
                "they share a frame of reference."
            )
        top = max(float(s.dose.max()) for s in samples.values() if len(s.dose))
        curves = {name: dvh.compute_dvh(s, bin_width_gy, top) for name, s in samples.items()}
        metrics = {name: dose_metrics.structure_metrics(s, tuple(v_doses_gy)) for name, s in samples.items()}
        plan_indices = {}
        if prescription_gy and target_segment:
            plan_indices = _plan_indices(dose_node, samples, prescription_gy, target_segment, body_segment)
        dose_name = dose_node.GetName()
        tables, combined, combined_table = self._dvh_tables(dose_name, curves, bin_width_gy, existing)
        metrics_table = self._metrics_table(dose_name, metrics, plan_indices, existing)
        chart = bridge.create_plot_chart(
            self.scene,
            combined_table,
            "Dose (Gy)",
            [c for c in combined if c != "Dose (Gy)"],
            f"{dose_name} DVH chart",
            x_title="Dose (Gy)",
            y_title="Volume (%)",
            chart=existing.chart if existing else None,
        )
        self.progress.update("DVH", 1.0)
        all_metrics = {name: m for name, m in metrics.items()}
        all_metrics.update({"plan": plan_indices} if plan_indices else {})
        return DvhResult(tables, metrics_table, chart, combined_table, all_metrics)

    def _dvh_tables(self, dose_name: str, curves: dict, bin_width_gy: float, existing: DvhResult | None):
        """One DVH table per structure and the combined cumulative one: ``(tables, combined columns, node)``;
        the nodes of ``existing`` are updated instead of adding new ones."""
        tables = {}
        for name, curve in curves.items():
            node = existing.tables.get(name) if existing else None
            tables[name] = bridge.create_table(
                self.scene,
                {
                    "Dose (Gy)": curve.dose_gy,
                    "Volume (%)": curve.cumulative_percent,
                    "Volume (cc)": curve.cumulative_cc,
                    "Differential (cc)": curve.differential_cc,
                },
                f"{dose_name} DVH {name}",
                node=node,
            )
        n_bins = max(len(c.dose_gy) for c in curves.values())
        combined = {"Dose (Gy)": np.arange(n_bins) * bin_width_gy}
        for name, curve in curves.items():
            combined[f"{name} (%)"] = np.pad(curve.cumulative_percent, (0, n_bins - len(curve.dose_gy)))
        combined_table = bridge.create_table(
            self.scene, combined, f"{dose_name} DVH", node=existing.combined_table if existing else None
        )
        return tables, combined, combined_table

    def _metrics_table(self, dose_name: str, metrics: dict, plan_indices: dict, existing: DvhResult | None):
        """The metrics table (one row per structure); plan indices become ``MedAI.<index>`` attributes."""
        keys = sorted({k for m in metrics.values() for k in m})
        columns = {"Structure": list(metrics)}
        for key in keys:
            columns[key] = [float(m.get(key, float("nan"))) for m in metrics.values()]
        metrics_table = bridge.create_table(
            self.scene, columns, f"{dose_name} DVH metrics", node=existing.metrics_table if existing else None
        )
        for key, value in plan_indices.items():
            metrics_table.SetAttribute(f"MedAI.{key}", repr(float(value)))
        return metrics_table

    # --- plan report -----------------------------------------------------------------------
    def write_report(
        self,
        path,
        dose_node,
        dvh_result: DvhResult,
        ct_node=None,
        title: str | None = None,
        isodose_levels_gy=(),
        info: dict | None = None,
        structures_node=None,
        target: str | None = None,
        prescription_gy: float | None = None,
    ) -> Path:
        """Write the plan report for ``dose_node`` and a :meth:`compute_dvh` result: a 3-page A4 PDF (summary and
        metrics, axial/coronal/sagittal dose on the CT with the structures outlined and isodose lines, DVH) when
        ``path`` ends in .pdf, else a one-page PNG. ``ct_node`` is sampled on the dose grid; ``structures_node``
        gives the outlines; slices go through the ``target``'s largest section when given."""
        from MedAIPlanLib.plan_report_nodes import write_plan_report_for_nodes

        self.progress.update("Plan report", 0.5)
        out = write_plan_report_for_nodes(
            path,
            dose_node,
            dvh_result,
            ct_node=ct_node,
            structures_node=structures_node,
            target=target,
            prescription_gy=prescription_gy,
            isodose_levels_gy=tuple(isodose_levels_gy),
            info=info,
            title=title or f"{dose_node.GetName()} plan report",
        )
        self.progress.update("Plan report", 1.0)
        return Path(out)

    # --- gamma ---------------------------------------------------------------------------
    def gamma(
        self,
        reference_node,
        evaluated_node,
        dose_percent: float = 3.0,
        dta_mm: float = 3.0,
        threshold_percent: float = 10.0,
        local: bool = False,
        max_gamma: float = 2.0,
        normalization_dose_gy: float | None = None,
        step_mm: float | None = None,
        device: str = "auto",
        output_node=None,
        interpolation: str = "trilinear",
    ):
        """Gamma volume of ``evaluated_node`` vs ``reference_node`` on the reference grid, and its result.

        The evaluated dose is searched by trilinear interpolation with ``step_mm`` (default DTA/10, see
        :mod:`gamma`), or on its own voxel lattice with ``interpolation="none"`` (SlicerRT's mode).
        Voxels below the threshold are 0 in the volume (as SlicerRT); the pass rate counts the others.
        """
        check_gamma_criteria(dose_percent, dta_mm, threshold_percent, max_gamma, normalization_dose_gy, step_mm)
        for node, role in ((reference_node, "reference dose"), (evaluated_node, "evaluated dose")):
            bridge.require_scalar_volume(node, role)
            bridge.require_volume_extent(node, 2, role)
        bridge.require_overlap(reference_node, evaluated_node, "reference and evaluated doses", warn_partial=True)
        ref, ref_geo = bridge.array_from_volume(reference_node)
        ev, ev_geo = bridge.array_from_volume(evaluated_node)
        from MedAIPlanLib.evaluation import gamma as gamma_lib  # torch: imported by the commands that need it

        torch_device = select_device(device)
        result = gamma_lib.gamma_index(
            ref,
            ref_geo,
            ev,
            ev_geo,
            dose_percent,
            dta_mm,
            threshold_percent,
            local,
            max_gamma,
            normalization_dose_gy,
            step_mm,
            torch_device,
            progress=lambda f: self.progress.update("gamma", f),
            interpolation=interpolation,
        )
        volume = np.nan_to_num(result.gamma, nan=0.0).astype(np.float32)
        node = bridge.create_volume(self.scene, volume, ref_geo, f"{evaluated_node.GetName()} gamma", node=output_node)
        node.SetAttribute("DoseComparison.GammaVolume", "1")
        node.SetAttribute("MedAI.GammaPassRate", repr(result.pass_rate))
        node.SetAttribute("MedAI.GammaInterpolation", result.interpolation)
        if not result.evaluated_voxels:
            notices.warn(
                f"No voxel of '{reference_node.GetName()}' is above the {threshold_percent:g} % threshold: "
                "the gamma pass rate is undefined; lower the threshold or check the reference dose."
            )
        return node, result

    # --- isodose -------------------------------------------------------------------------
    def isodose(
        self,
        dose_node,
        levels=isodose.DEFAULT_LEVELS_PERCENT,
        prescription_gy: float | None = None,
        percent: bool = True,
        smooth: bool = False,
        existing_models=None,
    ):
        """Isodose surface model nodes (one per level reached) and a legend table node."""
        bridge.require_scalar_volume(dose_node, "dose volume")
        bridge.require_volume_extent(dose_node, 2, "dose volume")
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
            models.append(
                bridge.create_model(
                    self.scene, poly, f"{dose_node.GetName()} isodose {level.label}", node=node, color=level.color
                )
            )
        legend = bridge.create_table(self.scene, isodose.legend_rows(lv), f"{dose_node.GetName()} isodose legend")
        return models, legend, lv
