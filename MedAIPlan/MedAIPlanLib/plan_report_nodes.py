"""Plan reports from MRML nodes: the dose node, the DVH result, the CT and the structures, put on the dose
grid (CT by linear interpolation, structures nearest-neighbour) through the bridge, then written by
:mod:`plan_report`. Also reads the CT a report shows from a volume file or a matRad/pyRadPlan ``.mat``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MedAICommonLib import bridge

from MedAIPlanLib.evaluation import plan_report
from MedAIPlanLib.dose.matrad_io import load_matrad_patient


def load_report_ct(scene, path, name: str | None = None):
    """A CT volume node (HU) from a volume file, or from the ``ct`` of a matRad/pyRadPlan patient ``.mat``
    (the CT that ``medai plan --matrad`` planned on; its grid is read as :mod:`matrad_io` reads it)."""
    path = Path(path)
    if path.suffix.lower() != ".mat":
        return bridge.load_volume(scene, path, name)
    patient = load_matrad_patient(path)
    return bridge.create_volume(
        scene, np.asarray(patient.hu, np.float32), patient.geometry.to_space("RAS"), name or f"{path.stem} CT"
    )


def dvh_curves(dvh_result) -> dict:
    """The cumulative DVH of each structure of a DVH result: ``{name: (dose Gy, volume %)}``."""
    curves = {}
    for name, table in dvh_result.tables.items():
        cols = bridge.columns_from_table(table)
        curves[name] = (np.asarray(cols["Dose (Gy)"], float), np.asarray(cols["Volume (%)"], float))
    return curves


def plan_report_from_nodes(
    dose_node,
    dvh_result,
    ct_node=None,
    structures_node=None,
    target: str | None = None,
    prescription_gy: float | None = None,
    isodose_levels_gy=(),
    info: dict | None = None,
    title: str | None = None,
) -> plan_report.PlanReport:
    """A :class:`plan_report.PlanReport` on the dose grid: CT (HU, -1000 outside it) and the outlines of the
    structures that have a DVH in ``dvh_result`` (all of them when it has no tables)."""
    dose, geometry = bridge.array_from_volume(dose_node)
    geometry = geometry.with_shape(dose.shape)
    ct = None
    if ct_node is not None:
        ct_array, ct_geometry = bridge.array_from_volume(ct_node)
        ct = bridge.resample_array(np.asarray(ct_array, np.float32), ct_geometry, geometry, default_value=-1000.0)
    structures = {}
    if structures_node is not None:
        names = list(dvh_result.tables) or None
        structures, _ = bridge.segment_masks(structures_node, geometry, names)
    metrics = {n: m for n, m in dvh_result.metrics.items() if n != "plan"}
    if target is not None:
        target = next((n for n in structures if n.lower() == str(target).lower()), target)
    return plan_report.PlanReport(
        np.asarray(dose, float),
        geometry,
        dvh_curves(dvh_result),
        metrics,
        ct,
        structures,
        target,
        tuple(isodose_levels_gy),
        prescription_gy,
        dvh_result.metrics.get("plan"),
        info,
        title or f"{dose_node.GetName()} plan report",
    )


def write_plan_report_for_nodes(path, dose_node, dvh_result, **kwargs) -> Path:
    """Write the report of :func:`plan_report_from_nodes` (``kwargs``): a 3-page PDF when ``path`` ends in
    .pdf, else a one-page image (PNG). Every page is A4 landscape."""
    report = plan_report_from_nodes(dose_node, dvh_result, **kwargs)
    if Path(path).suffix.lower() == ".pdf":
        return plan_report.write_report_pdf(path, report)[0]
    return plan_report.write_report_png(path, report)
