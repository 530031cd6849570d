"""Contour QA as the MedAIPlan panel runs it: settings in, a ranked table node and a paired-DVH chart out.

The same computation as ``medai contour-qa`` (:mod:`.commands`) on nodes already in the scene: a candidate
structure set compared with the reference on a dose, or the reference with its model's probability maps (DVH
bands). The rows the panel colours come from :meth:`.logic.ContourQALogic.flagged_rows`, and the table's Qt
model row of each table row from :func:`table_model_rows`; :func:`show_in_layout` puts the table and the chart
in Slicer's "Four-Up Plot Table" layout through MRML alone (layout node, selection node, application logic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from MedAICommonLib import bridge
from MedAICommonLib.paths import chosen_path
from MedAICommonLib.progress import Progress

from MedAIPlanLib.panel_state import CONTOUR_QA_MODES
from .bands import DEFAULT_LEVELS, check_levels, parse_constraint
from .labels import name_key
from .logic import ContourQALogic, ContourQAResult
from .metrics import Thresholds

MODES = CONTOUR_QA_MODES
CANDIDATE_MODE, PROBABILITY_MODE = MODES
_PROBABILITY_AFFIXES = (r"^prob(ability)?[\s_\-]+", r"[\s_\-]+prob(ability)?$")


@dataclass
class ContourQASettings:
    """What the panel's Contour QA section holds (Gy, %, mm), with the defaults of ``medai contour-qa``.

    ``prescription_gy`` 0 means none (limits in Gy only); ``plan_target`` empty means no target D95 check;
    ``constraints`` is text such as ``"liver:Dmean<30; spinal_cord:D0.03cc<45"``.
    """

    mode: str = CANDIDATE_MODE
    plan_target: str = ""
    prescription_gy: float = 0.0
    dmean_gy: float = 1.0
    dmean_percent: float = 3.0
    target_d95_percent: float = 2.0
    tolerance_mm: float = 2.0
    constraints: str = ""
    levels: tuple = DEFAULT_LEVELS
    v_doses_gy: tuple = (20.0, 30.0)
    top: int = 4

    def thresholds(self) -> Thresholds:
        """The dose-relevance limits (the Dmax limits keep the CLI's defaults)."""
        return Thresholds(
            dmean_gy=self.dmean_gy, dmean_percent=self.dmean_percent, target_d95_percent=self.target_d95_percent
        )

    def constraint_list(self) -> list:
        """The constraints, split on ``;``, ``,`` or new lines (:func:`.bands.parse_constraint` each)."""
        return [parse_constraint(text.strip()) for text in re.split(r"[;,\n]+", self.constraints or "") if text.strip()]


@dataclass
class ContourQAOutput:
    """The rows, the ranked table node, the DVH chart (and its table) and the flagged table rows."""

    result: ContourQAResult
    table: object
    chart: object
    dvh_table: object
    flagged: list = field(default_factory=list)


def probability_key(name: str) -> str:
    """The structure a probability volume is named after: ``prob_liver``, ``liver probability`` -> ``liver``
    (compared as :func:`.labels.name_key`)."""
    text = str(name).strip()
    for affix in _PROBABILITY_AFFIXES:
        text = re.sub(affix, "", text, flags=re.I)
    return name_key(text)


def probability_nodes_by_name(structures, nodes) -> dict:
    """``{structure: volume node}`` for the ``nodes`` named after a structure (see :func:`probability_key`);
    ``ValueError`` naming both lists when none is."""
    by_key = {probability_key(node.GetName()): node for node in nodes if node is not None}
    found = {s: by_key[name_key(s)] for s in structures if name_key(s) in by_key}
    if not found:
        raise ValueError(
            f"No probability volume is named after a reference structure (prob_<name> or <name>); "
            f"the volumes are {', '.join(n.GetName() for n in nodes if n is not None) or 'none'}; the "
            f"structures are {', '.join(list(structures)[:10])}."
        )
    return found


def load_probability_folder(scene, folder, structures) -> dict:
    """``{structure: volume node}`` read from a folder of ``prob_<name>.nrrd`` (``medai segment
    --probabilities``); the caller removes the nodes when done (they are inputs, not results)."""
    from .commands import probability_files

    return {name: bridge.load_volume(scene, path) for name, path in probability_files(folder, structures).items()}


def structure_names(reference_node) -> list[str]:
    """The segment names of the reference structure set (what probability maps are matched against)."""
    bridge.require_segmentation(reference_node, "reference structure set")
    return [s.name for s in bridge.segment_infos(reference_node)]


def run_contour_qa(
    scene,
    dose_node,
    reference_node,
    settings: ContourQASettings,
    candidate_node=None,
    probability_nodes: dict | None = None,
    table_node=None,
    chart_node=None,
    progress: Progress | None = None,
) -> ContourQAOutput:
    """Compare (candidate mode) or give bands (probability mode); fill ``table_node`` (or a new one) and
    ``chart_node`` (or a new one) only once every number is computed.

    The table equals the one ``medai contour-qa --table`` writes for the same inputs and options: the same
    rows in the same order (dose relevance; bands crossing a constraint first without a candidate).
    """
    from .commands import _band_rank  # the CLI's order of bands-only rows, so both tables agree

    if settings.mode not in MODES:
        raise ValueError(f"Contour QA mode must be one of {', '.join(MODES)}; got {settings.mode!r}.")
    logic = ContourQALogic(scene, progress or Progress())
    constraints = settings.constraint_list()
    levels = check_levels(settings.levels)
    if settings.mode == CANDIDATE_MODE:
        if candidate_node is None:
            raise ValueError("Choose the candidate segmentation to compare with the reference.")
        result = logic.compare(
            dose_node,
            reference_node,
            candidate_node,
            None,
            settings.plan_target.strip() or None,
            settings.v_doses_gy,
            settings.tolerance_mm,
            settings.prescription_gy or None,
            settings.thresholds(),
            constraints,
            table_node=table_node,
        )
        probability_nodes = None
    else:
        if not probability_nodes:
            raise ValueError(
                "Choose the probability maps: a folder of prob_<structure>.nrrd files or volumes "
                "named after the reference structures."
            )
        candidate_node = None
        result = logic.reference_only(dose_node, reference_node, settings.v_doses_gy)
        logic.attach_bands(result, logic.bands(dose_node, probability_nodes, levels, constraints))
        result.structures = dict(sorted(result.structures.items(), key=_band_rank))
        result.table = logic.table(result, table_node)
    dvh_table, chart = logic.dvh_chart(
        result, dose_node, reference_node, candidate_node, probability_nodes, top=settings.top, chart=chart_node
    )
    return ContourQAOutput(result, result.table, chart, dvh_table, logic.flagged_rows(result.table))


def table_model_rows(table_node, rows) -> list[int]:
    """The row of Slicer's table model (``qMRMLTableModel``) showing each table row: one more while the column
    names take the model's first row (``UseColumnTitleAsColumnHeader`` off, the default in every version)."""
    offset = 0 if table_node.GetUseColumnTitleAsColumnHeader() else 1
    return [int(r) + offset for r in rows]


def show_in_layout(scene, app_logic, table_node, chart_node) -> None:
    """Switch the view layout to "Four-Up Plot Table" and show ``table_node`` and ``chart_node`` in its views,
    as Slicer's Tables and Plots modules do (layout node arrangement, selection node, propagation)."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None:
        layout.SetViewArrangement(type(layout).SlicerLayoutFourUpPlotTableView)
    selection = app_logic.GetSelectionNode()
    selection.SetActiveTableID(table_node.GetID())
    selection.SetActivePlotChartID(chart_node.GetID())
    app_logic.PropagateTableSelection()
    app_logic.PropagatePlotChartSelection()


def settings_from_parameters(p) -> ContourQASettings:
    """The settings held by the panel's parameter node (its ``qa*`` fields)."""
    return ContourQASettings(
        mode=p.qaMode,
        plan_target=p.qaTargetSegment,
        prescription_gy=p.qaPrescriptionGy,
        dmean_gy=p.qaDmeanGy,
        dmean_percent=p.qaDmeanPercent,
        target_d95_percent=p.qaTargetD95Percent,
        tolerance_mm=p.qaToleranceMm,
        constraints=p.qaConstraints,
    )


def run_from_parameters(scene, p, scene_volumes=(), progress: Progress | None = None) -> ContourQAOutput:
    """What the panel's Compute button runs: :func:`run_contour_qa` on the parameter node's nodes, updating its
    output table and chart. In probability mode the maps come from the chosen folder (read for this run and
    removed after it) or else from ``scene_volumes`` named after the reference structures."""
    settings = settings_from_parameters(p)
    probability_nodes, loaded = None, []
    if settings.mode == PROBABILITY_MODE:
        names = structure_names(p.qaReference)
        folder = chosen_path(p.qaProbabilityFolder)
        if folder is not None:
            probability_nodes = load_probability_folder(scene, folder, names)
            loaded = list(probability_nodes.values())
        elif scene_volumes:
            probability_nodes = probability_nodes_by_name(names, list(scene_volumes))
    try:
        return run_contour_qa(
            scene, p.qaDose, p.qaReference, settings, p.qaCandidate, probability_nodes, p.qaTable, p.qaChart, progress
        )
    finally:
        for node in loaded:
            scene.RemoveNode(node)
