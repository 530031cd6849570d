"""Contour QA Logic on MRML nodes: two segmentation nodes (or one plus probability volumes) on a dose volume.

The Logic reads the nodes through the bridge (masks on the reference segmentation's own grid, the dose on
its grid, RAS), computes the rows with :mod:`.metrics` and :mod:`.bands`, and fills a table node sorted by
dose relevance. It creates no node before the numbers are computed and never modifies its inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from MedAICommonLib import bridge, notices
from MedAICommonLib.progress import Progress
from MedAICommonLib.runtime import get_scene

from MedAIPlanLib.evaluation import dvh
from .bands import DEFAULT_LEVELS, check_band, constraints_for, probability_band
from .labels import match_names, name_key
from .metrics import DOSE_KEYS, Thresholds, compare_structure, dose_statistics, ranked


@dataclass
class ContourQAResult:
    """Rows ``{structure: {...}}`` in rank order, unmatched names, the table node and the timings (s)."""

    structures: dict
    unmatched_reference: list = field(default_factory=list)
    unmatched_candidate: list = field(default_factory=list)
    table: object = None
    timings_s: dict = field(default_factory=dict)
    pairs: list = field(default_factory=list)


def _dose(dose_node):
    bridge.require_scalar_volume(dose_node, "dose volume")
    bridge.require_volume_extent(dose_node, 2, "dose volume")
    dose, geometry = bridge.array_from_volume(dose_node)
    return np.asarray(dose), geometry.with_shape(dose.shape)


def _warn_off_grid(name: str, mask: np.ndarray, grid, dose_geometry) -> None:
    """Warn when a structure lies partly or wholly off the dose grid (that part counts as 0 Gy)."""
    points = np.argwhere(mask)[:, ::-1]
    if not len(points):
        return
    points = grid.to_space(dose_geometry.space).index_to_point(points[:: max(1, len(points) // 5000)].astype(float))
    inside = dvh.fraction_inside_grid(dose_geometry, points)
    if inside < 0.999:
        notices.warn(f"Structure '{name}' lies {100.0 * (1.0 - inside):.1f} % outside the dose grid: that part counts "
                     "as 0 Gy in both DVHs; check that the dose and the structures share a frame of reference.")


def _truthy(value) -> bool:
    """A table cell read as a flag: a non-zero finite number, or the text ``true``/``1``."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "1.0", "yes")
    return bool(np.isfinite(value) and value != 0)


def _constraint_changes(row: dict, constraints) -> None:
    """Record each constraint the reference meets and the candidate does not (or back); such a row is relevant."""
    out = []
    for c in constraints:
        ref, cand = (c.met(float(row[side].get(DOSE_KEYS[c.stat], np.nan))) for side in ("reference", "candidate"))
        out.append({"constraint": c.text, "met_reference": ref, "met_candidate": cand})
        if ref is not None and cand is not None and ref != cand:
            row["dose_relevant"] = True
            row["relevance_reasons"].append(f"constraint {c.text} {'met' if ref else 'failed'} by the reference, "
                                            f"{'met' if cand else 'failed'} by the candidate")
    if out:
        row["constraints"] = out


class ContourQALogic:
    """Compare structure sets on a dose and give DVH bands from probability maps (nodes in, numbers and a table out)."""

    def __init__(self, scene=None, progress: Progress | None = None):
        self.scene = scene if scene is not None else get_scene()
        self.progress = progress or Progress()

    def compare(self, dose_node, reference_node, candidate_node, mapping: dict | None = None,
                plan_target: str | None = None, v_doses_gy=(20.0, 30.0), tolerance_mm: float = 2.0,
                prescription_gy: float | None = None, thresholds: Thresholds | None = None, constraints=(),
                oversampling: int = 2, table_node=None) -> ContourQAResult:
        """Rows per structure matched by name (``mapping``: ``{reference name: candidate name}``), ranked by
        dose relevance; unmatched names are listed and warned about. ``plan_target`` (a reference name) gets
        the target D95 check; ``constraints`` (:class:`.bands.Constraint`) flag a pass/fail change."""
        if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
            raise ValueError(f"The surface-Dice tolerance must be >= 0 mm, got {tolerance_mm}.")
        timings, start = {}, time.perf_counter()
        for node, role in ((reference_node, "reference structure set"), (candidate_node, "candidate structure set")):
            bridge.require_segmentation(node, role)
        dose, dose_geometry = _dose(dose_node)
        ref_names = [s.name for s in bridge.segment_infos(reference_node)]
        cand_names = [s.name for s in bridge.segment_infos(candidate_node)]
        pairs, lone_ref, lone_cand = match_names(ref_names, cand_names, mapping)
        if not pairs:
            raise ValueError(f"No structure of the candidate has the name of a reference structure: the reference "
                             f"has {', '.join(ref_names)}; the candidate has {', '.join(cand_names)}. Give a mapping "
                             "file (--mapping) pairing the names.")
        if lone_ref or lone_cand:
            notices.warn(f"Structures without a partner of the same name (not compared): reference "
                         f"{', '.join(lone_ref) or 'none'}; candidate {', '.join(lone_cand) or 'none'}.")
        if plan_target and name_key(plan_target) not in {name_key(r) for r, _ in pairs}:
            raise ValueError(f"The plan target '{plan_target}' is not among the matched structures "
                             f"({', '.join(r for r, _ in pairs)}); give one of these names.")
        ref_masks, grid = bridge.segment_masks(reference_node, None, [r for r, _ in pairs])
        cand_masks, _ = bridge.segment_masks(candidate_node, grid, [c for _, c in pairs])
        timings["masks"] = time.perf_counter() - start
        rows = {}
        for n, (ref_name, cand_name) in enumerate(pairs):
            self.progress.update(f"contour QA {ref_name}", n / len(pairs))
            is_target = bool(plan_target and name_key(ref_name) == name_key(plan_target))
            row = compare_structure(dose, dose_geometry, ref_masks[ref_name], cand_masks[cand_name], grid,
                                    v_doses_gy, tolerance_mm, thresholds, prescription_gy, is_target, oversampling)
            row["candidate_name"] = cand_name
            _constraint_changes(row, constraints_for(ref_name, constraints))
            _warn_off_grid(ref_name, ref_masks[ref_name], grid, dose_geometry)
            if not row["volume_candidate_cc"] or not row["volume_reference_cc"]:
                notices.warn(f"Structure '{ref_name}' is empty in the "
                             f"{'candidate' if row['volume_reference_cc'] else 'reference'}: it has no dose difference.")
            rows[ref_name] = row
        timings["compare"] = time.perf_counter() - start - timings["masks"]
        ordered = {name: rows[name] for name in ranked(rows)}
        self.progress.update("contour QA", 1.0)
        result = ContourQAResult(ordered, lone_ref, lone_cand, None, timings, pairs)
        result.table = self.table(result, table_node)
        return result

    def bands(self, dose_node, probability_nodes: dict, levels=DEFAULT_LEVELS, constraints=(),
              oversampling: int = 2) -> dict:
        """``{structure: band}`` from ``{structure name: probability volume node}`` (:func:`.bands.probability_band`),
        with ``constraints`` checked against each band (``constraint_checks``; ``band_crosses_constraint``)."""
        dose, dose_geometry = _dose(dose_node)
        out = {}
        for n, (name, node) in enumerate(probability_nodes.items()):
            self.progress.update(f"DVH band {name}", n / max(len(probability_nodes), 1))
            bridge.require_scalar_volume(node, f"probability map of '{name}'")
            probability, geometry = bridge.array_from_volume(node)
            band = probability_band(dose, dose_geometry, probability, geometry.with_shape(probability.shape),
                                    levels, oversampling, name)
            checks = [check_band(band, c) for c in constraints_for(name, constraints)]
            if checks:
                band["constraint_checks"] = checks
            band["band_crosses_constraint"] = any(bool(c["band_crosses"]) for c in checks)
            out[name] = band
        return out

    def reference_only(self, dose_node, reference_node, v_doses_gy=(20.0, 30.0)) -> ContourQAResult:
        """Rows holding only the reference structures' dose statistics (for bands without a candidate set)."""
        bridge.require_segmentation(reference_node, "reference structure set")
        dose, dose_geometry = _dose(dose_node)
        masks, grid = bridge.segment_masks(reference_node)
        rows = {name: {"reference": dose_statistics(dose, dose_geometry, mask, grid, v_doses_gy), "relevance": 0.0,
                       "dose_relevant": False, "relevance_reasons": []} for name, mask in masks.items()}
        return ContourQAResult(rows)

    @staticmethod
    def attach_bands(result: ContourQAResult, bands: dict) -> None:
        """Put each structure's band into its row (``D95_band_Gy``, ``Dmean_band_Gy`` ... and ``band``)."""
        for name, band in bands.items():
            row = result.structures.get(name)
            if row is None:
                continue
            row.update({k: v for k, v in band.items() if k.endswith("_band_Gy") or k == "volume_band_cc"})
            row["band"] = {k: v for k, v in band.items() if not k.endswith("_band_Gy")}
            row["band_crosses_constraint"] = band["band_crosses_constraint"]
            row["levels"] = band["levels"]
            if band["band_crosses_constraint"]:
                crossed = [c["constraint"] for c in band.get("constraint_checks", []) if c["band_crosses"]]
                row.setdefault("relevance_reasons", []).append(
                    f"the model's uncertainty band crosses {', '.join(crossed)}")

    def table(self, result: ContourQAResult, node=None):
        """The result as a table node (one row per structure, in rank order; the flagged ones first).

        ``band_crosses_constraint`` is a column when bands are attached (1 where a band crosses a constraint)."""
        rows = result.structures
        keys = ["dose_relevant", "relevance", "dice", "hd95_mm", "surface_dice", "volume_reference_cc",
                "volume_candidate_cc"]
        if any("band_crosses_constraint" in r for r in rows.values()):
            keys.insert(1, "band_crosses_constraint")
        deltas = sorted({k for r in rows.values() for k in r if k.startswith("delta_")},
                        key=lambda k: (not k.endswith("_Gy"), k))
        bands = sorted({k for r in rows.values() for k in r if k.endswith("_band_Gy")})
        columns = {"Structure": list(rows), "Candidate": [r.get("candidate_name", "") for r in rows.values()]}
        for key in keys + deltas:
            columns[key] = [float(r.get(key, np.nan)) for r in rows.values()]
        for stat in ("Dmean", "D95", "D2", "D0.03cc"):
            for side in ("reference", "candidate"):
                columns[f"{side}_{stat}_Gy"] = [float(r.get(side, {}).get(DOSE_KEYS[stat], np.nan))
                                                for r in rows.values()]
        for key in bands:
            columns[f"{key}_low"] = [float(r.get(key, [np.nan, np.nan])[0]) for r in rows.values()]
            columns[f"{key}_high"] = [float(r.get(key, [np.nan, np.nan])[1]) for r in rows.values()]
        columns["reasons"] = ["; ".join(r.get("relevance_reasons", [])) for r in rows.values()]
        return bridge.create_table(self.scene, columns, "contour QA", node=node)

    @staticmethod
    def dvh_curves(dose_node, segmentation_node, names, bin_width_gy: float = 0.1, reference=None) -> dict:
        """``{name: (dose Gy, volume %)}`` cumulative DVHs of ``names`` (masks on ``reference``, a Geometry)."""
        dose, dose_geometry = _dose(dose_node)
        masks, grid = bridge.segment_masks(segmentation_node, reference, list(names))
        top = float(dose.max())
        curves = {}
        for name, mask in masks.items():
            curve = dvh.compute_dvh(dvh.mask_samples(dose, dose_geometry, mask, grid), bin_width_gy, top)
            curves[name] = (curve.dose_gy, curve.cumulative_percent)
        return curves

    def write_report(self, path, result: ContourQAResult, dose_node, reference_node, candidate_node=None,
                     probability_nodes: dict | None = None, ct_node=None, info: dict | None = None, top: int = 16):
        """Write the PDF/PNG report (:mod:`.report`) of ``result``: paired DVHs of the ``top`` most relevant
        structures (bands from ``probability_nodes``), the axial disagreement view (``ct_node`` under the dose)."""
        from . import report as report_lib

        names = list(result.structures)[:top]
        ref_curves = self.dvh_curves(dose_node, reference_node, names)
        grid = bridge.segment_masks(reference_node, None, names[:1])[1] if names else None
        pairs = dict(result.pairs)
        cand_names = [pairs[n] for n in names if n in pairs] if candidate_node is not None else []
        cand_curves = self.dvh_curves(dose_node, candidate_node, cand_names, reference=grid) if cand_names else {}
        curves = {n: {"reference": ref_curves[n]} | ({"candidate": cand_curves[pairs[n]]} if n in pairs and
                                                        pairs[n] in cand_curves else {}) for n in names}
        bands = {n: self.band_curves(dose_node, probability_nodes[n], result.structures[n].get("levels", DEFAULT_LEVELS))
                 for n in names if probability_nodes and n in probability_nodes}
        view = (self._report_view(dose_node, reference_node, candidate_node, names[:3], cand_names[:3], grid, ct_node)
                if candidate_node is not None else None)  # bands only: no disagreement to show
        content = report_lib.ContourQAReport(
            "Contour QA", result.structures, curves, view, bands, dict(info or {}),
            {"reference": result.unmatched_reference, "candidate": result.unmatched_candidate})
        return report_lib.write_report(path, content, top)

    def band_curves(self, dose_node, probability_node, levels=DEFAULT_LEVELS) -> list:
        """Cumulative DVH ``(Gy, %)`` of ``p >= level`` for each probability level (for the report's band)."""
        dose, dose_geometry = _dose(dose_node)
        probability, geometry = bridge.array_from_volume(probability_node)
        geometry = geometry.with_shape(probability.shape)
        curves = []
        for level in levels:
            samples = dvh.mask_samples(dose, dose_geometry, probability >= level, geometry)
            if len(samples.dose):
                curve = dvh.compute_dvh(samples, 0.1, float(dose.max()))
                curves.append((curve.dose_gy, curve.cumulative_percent))
        return curves

    @staticmethod
    def _report_view(dose_node, reference_node, candidate_node, names, cand_names, grid, ct_node):
        """Dose (and CT) on the masks' grid with both contour sets of ``names``, for the axial panel."""
        if grid is None or not names:
            return None
        from .report import ReportView

        dose, dose_geometry = _dose(dose_node)
        ijk = np.indices(grid.shape_kji).reshape(3, -1)[::-1].T.astype(float)
        points = grid.to_space(dose_geometry.space).index_to_point(ijk)
        on_grid = dvh.dose_at_points(dose, dose_geometry, points).reshape(grid.shape_kji)
        reference, _ = bridge.segment_masks(reference_node, grid, names)
        candidate = {}
        if candidate_node is not None and cand_names:
            masks, _ = bridge.segment_masks(candidate_node, grid, cand_names)
            candidate = {n: masks[c] for n, c in zip(names, cand_names)}
        candidate = {n: candidate.get(n, np.zeros(grid.shape_kji, bool)) for n in names}
        ct = None
        if ct_node is not None:
            ct_array, ct_geometry = bridge.array_from_volume(ct_node)
            ct = bridge.resample_array(np.asarray(ct_array, np.float32), ct_geometry.with_shape(ct_array.shape), grid,
                                       default_value=-1000.0)
        return ReportView(on_grid, grid, reference, candidate, ct)

    def dvh_chart(self, result: ContourQAResult, dose_node, reference_node, candidate_node=None,
                  probability_nodes: dict | None = None, top: int = 4, bin_width_gy: float = 0.1, chart=None):
        """A table node of paired cumulative DVHs (%, per 0.1 Gy) of the ``top`` most relevant structures (with
        their band's low/high curves from ``probability_nodes``) and a plot chart of it: reference solid,
        candidate dashed, band dotted, one colour per structure. Returns (table, chart).

        ``chart``: a chart of an earlier run to update in place (its table node is reused and its old series
        nodes leave the scene), so a re-run replaces the curves instead of adding nodes."""
        names = list(result.structures)[:top]
        pairs = dict(result.pairs)
        ref = self.dvh_curves(dose_node, reference_node, names, bin_width_gy)
        grid = bridge.segment_masks(reference_node, None, names[:1])[1] if names else None
        cand_names = [pairs[n] for n in names if n in pairs] if candidate_node is not None else []
        cand = self.dvh_curves(dose_node, candidate_node, cand_names, bin_width_gy, grid) if cand_names else {}
        dose_axis = np.arange(int(np.ceil(float(_dose(dose_node)[0].max()) / bin_width_gy)) + 2) * bin_width_gy
        columns, styles = {"Dose (Gy)": dose_axis}, {}
        for n in names:
            curves = {"reference": ref[n]}
            if n in pairs and pairs[n] in cand:
                curves["candidate"] = cand[pairs[n]]
            if probability_nodes and n in probability_nodes:
                band = self.band_curves(dose_node, probability_nodes[n], result.structures[n].get("levels", DEFAULT_LEVELS))
                if band:
                    ys = np.array([np.interp(dose_axis, d, v, right=0.0) for d, v in band])
                    curves.update({"band low": (dose_axis, ys.min(0)), "band high": (dose_axis, ys.max(0))})
            for kind, (d, v) in curves.items():
                columns[f"{n} {kind} (%)"] = np.interp(dose_axis, d, v, right=0.0)
                styles[f"{n} {kind} (%)"] = (n, kind)
        old_series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())] if chart else []
        old_table = next((s.GetTableNode() for s in old_series if s is not None and s.GetTableNode()), None)
        table = bridge.create_table(self.scene, columns, "contour QA DVH", node=old_table)
        chart = bridge.create_plot_chart(self.scene, table, "Dose (Gy)", list(styles), "contour QA DVH chart",
                                         x_title="Dose (Gy)", y_title="Volume (%)", chart=chart)
        for series in old_series:
            if series is not None:
                self.scene.RemoveNode(series)
        self._style_series(chart, styles, names)
        return table, chart

    @staticmethod
    def flagged_rows(table_node) -> list[int]:
        """Rows (0-based, in table order) of a contour QA table that are flagged: ``dose_relevant`` set, or
        ``band_crosses_constraint`` set (bands from probability maps). What the panel colours."""
        columns = bridge.columns_from_table(table_node)
        flags = [columns[name] for name in ("dose_relevant", "band_crosses_constraint") if name in columns]
        rows = table_node.GetTable().GetNumberOfRows()
        return [r for r in range(rows) if any(_truthy(column[r]) for column in flags)]

    def _style_series(self, chart, styles: dict, names: list) -> None:
        """One colour per structure; candidate dashed, band dotted (plot series of ``chart``, by y column)."""
        from MedAICommonLib.figures import structure_colors

        colors = structure_colors(names)
        for i in range(chart.GetNumberOfPlotSeriesNodes()):
            series = chart.GetNthPlotSeriesNode(i)
            name, kind = styles[series.GetYColumnName()]
            rgb = tuple(int(colors[name][k:k + 2], 16) / 255.0 for k in (1, 3, 5))
            series.SetColor(*rgb)
            series.SetLineStyle({"reference": series.LineStyleSolid, "candidate": series.LineStyleDash}.get(
                kind, series.LineStyleDot))
