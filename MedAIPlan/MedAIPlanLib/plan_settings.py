"""A plan's settings and results as types: :class:`PlanSettings`, :class:`DoseResult` and :class:`PlanResult`.

:class:`PlanSettings` is the one place where a plan setting is spelled: each field's metadata names its
``medai plan`` option, its ``medai rt-export`` option and its ``MedAIPlan.*`` attribute on the dose node
(volume files do not keep attributes, so the panel's worker job and the RTPLAN export rebuild the beams
from them). :meth:`~PlanSettings.to_cli_args` generates a worker's command line, :meth:`~PlanSettings.from_namespace`
reads the parsed command line back, :meth:`~PlanSettings.to_node_attributes` and
:meth:`~PlanSettings.from_node_attributes` write and read the dose node's attributes.
Units: angles in degrees, lengths in mm, doses in Gy (whole plan), the isocentre in LPS mm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, cast

from MedAICommonLib.cli.command_line import format_value
from MedAICommonLib.devices import Device

from MedAIPlanLib.dose.beams import check_angles

PLAN_ATTRIBUTE_PREFIX = "MedAIPlan."
TG119_ANGLES = (0.0, 51.0, 102.0, 153.0, 204.0, 255.0, 306.0)
_UNSET_ATTRIBUTE = {"prescription_gy": "", "dose_grid_mm": "CT"}  # what a node says for a setting left unset


def _spec(kind: str, option: str | None = None, attribute: str | None = None, rt_option: str | None = None) -> dict:
    """Field metadata: value ``kind`` (text, number, integer, numbers, flag) and its three spellings."""
    return {"kind": kind, "option": option, "attribute": attribute, "rt_option": rt_option}


def format_number(value: float) -> str:
    """``value`` as short text that reads back as the same float ('60', '0.1', '1.2345678901')."""
    return format_value(float(value))


def parse_numbers(text, what: str) -> tuple[float, ...] | None:
    """Comma- (or semicolon-) separated numbers; None for None; ``ValueError`` naming ``what`` otherwise."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in str(text).replace(";", ",").split(",") if v.strip())
    except ValueError as error:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}.") from error


def plan_attribute(name: str) -> str:
    """The node attribute of setting ``name`` (a :class:`PlanSettings` field), e.g. ``MedAIPlan.GantryAngles``."""
    return PLAN_ATTRIBUTE_PREFIX + PlanSettings.spec(name)["attribute"]


def is_plan_dose(node) -> bool:
    """Whether ``node`` is the dose of a MedAI plan (it records the plan's gantry angles)."""
    return node is not None and bool((node.GetAttribute(plan_attribute("gantry_angles")) or "").strip())


@dataclass(frozen=True)
class PlanSettings:
    """What ``medai plan`` (and :meth:`MedAIPlanLogic.plan`) is run with.

    ``couch_angles`` empty means 0 for every beam; ``dose_grid_mm`` None means the CT grid;
    ``isocenter_lps`` None means the target centroid. Sequences are kept as tuples of floats.
    """

    target: str = field(metadata=_spec("text", "--target", "Target", "--target"))
    prescription_gy: float | None = field(
        default=None, metadata=_spec("number", "--prescription", "PrescriptionGy", "--prescription")
    )
    fractions: int = field(default=1, metadata=_spec("integer", "--fractions", "Fractions", "--fractions"))
    gantry_angles: tuple[float, ...] = field(
        default=TG119_ANGLES, metadata=_spec("numbers", "--gantry-angles", "GantryAngles", "--gantry")
    )
    couch_angles: tuple[float, ...] = field(
        default=(), metadata=_spec("numbers", "--couch-angles", "CouchAngles", "--couch")
    )
    bixel_width_mm: float = field(
        default=5.0, metadata=_spec("number", "--bixel-width", "BixelWidthMm", "--bixel-width")
    )
    dose_grid_mm: float | None = field(default=3.0, metadata=_spec("number", "--dose-grid", "DoseGridMm"))
    isocenter_lps: tuple[float, ...] | None = field(
        default=None, metadata=_spec("numbers", "--isocenter", "IsocenterLPS", "--isocenter")
    )
    device: Device = field(default="auto", metadata=_spec("text", "--device"))
    auto_dose_grid: bool = field(default=False, metadata=_spec("flag", "--auto-dose-grid"))
    memory_limit_gb: float | None = field(default=None, metadata=_spec("number", "--memory-limit-gb"))
    hlut_path: str | None = field(default=None, metadata=_spec("text", "--hlut"))
    select_beams: int | None = field(default=None, metadata=_spec("integer", "--select-beams"))
    iterations: int = field(default=150, metadata=_spec("integer", "--iterations"))

    def __post_init__(self) -> None:
        def tuple_of_floats(value):
            return None if value is None else tuple(float(v) for v in value)

        object.__setattr__(self, "gantry_angles", tuple_of_floats(self.gantry_angles))
        object.__setattr__(self, "couch_angles", tuple_of_floats(self.couch_angles) or ())
        object.__setattr__(self, "isocenter_lps", tuple_of_floats(self.isocenter_lps))
        if self.isocenter_lps is not None and len(self.isocenter_lps) != 3:
            raise ValueError("The isocentre needs three numbers x,y,z (LPS mm).")
        if self.couch_angles and len(self.couch_angles) != len(self.gantry_angles):
            raise ValueError("Give one couch angle per gantry angle (or none).")

    @staticmethod
    def spec(name: str) -> dict:
        """The metadata of field ``name``: ``kind``, ``option``, ``attribute``, ``rt_option``."""
        return dict(PlanSettings.__dataclass_fields__[name].metadata)

    # --- command lines ------------------------------------------------------------------------
    def _args(self, key: str) -> list[str]:
        args: list[str] = []
        for f in dataclasses.fields(self):
            option, value = f.metadata[key], getattr(self, f.name)
            if option is None or value is None or value == () or value is False:
                continue
            if f.metadata["kind"] == "flag":
                args.append(option)
                continue
            text = _format(f.metadata["kind"], value)
            args += [f"{option}={text}"] if text.startswith("-") else [option, text]
        return args

    def to_cli_args(self) -> list[str]:
        """The ``medai plan`` options that give these settings (no inputs or outputs)."""
        return self._args("option")

    def to_rt_export_args(self) -> list[str]:
        """The ``medai rt-export`` options that rebuild this plan's beams and RTPLAN."""
        return self._args("rt_option")

    @classmethod
    def from_namespace(cls, args) -> PlanSettings:
        """The settings of a parsed ``medai plan`` (or ``medai dose``) command line; options the command
        lacks keep their defaults. Angles outside 0 <= angle < 360 and bad number lists raise ``ValueError``."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            option = f.metadata["option"]
            value = getattr(args, option[2:].replace("-", "_"), None)
            if value is None:
                continue
            if f.metadata["kind"] == "numbers":
                value = parse_numbers(value, option) or ()
                if f.name == "isocenter_lps" and len(value) != 3:
                    raise ValueError(f"{option} needs three numbers x,y,z (LPS mm).")
                if f.name.endswith("angles"):
                    value = tuple(check_angles(value, option)) if value else ()
            values[f.name] = value
        values["device"] = cast(Device, values.get("device", "auto"))
        return cls(**values)

    # --- node attributes ----------------------------------------------------------------------
    def to_node_attributes(self) -> dict[str, str]:
        """``{"MedAIPlan.<Key>": text}`` for the settings a plan's dose node records."""
        out = {}
        for f in dataclasses.fields(self):
            key, value = f.metadata["attribute"], getattr(self, f.name)
            if key is None:
                continue
            if f.name == "couch_angles" and not value:
                value = (0.0,) * len(self.gantry_angles)
            if value is None:
                if f.name not in _UNSET_ATTRIBUTE:
                    continue
                text = _UNSET_ATTRIBUTE[f.name]
            elif f.name == "isocenter_lps":
                text = ",".join(f"{v:.2f}" for v in value)
            elif f.metadata["kind"] == "number":
                text = repr(float(value))
            else:
                text = _format(f.metadata["kind"], value)
            out[PLAN_ATTRIBUTE_PREFIX + key] = text
        return out

    def write_to_node(self, node) -> None:
        """Set :meth:`to_node_attributes` on ``node``."""
        for key, text in self.to_node_attributes().items():
            node.SetAttribute(key, text)

    @classmethod
    def from_node_attributes(cls, node) -> PlanSettings | None:
        """The settings a plan's dose node records (the others at their defaults); None when ``node`` is not
        the dose of a MedAI plan (:func:`is_plan_dose`). A missing target reads as ""."""
        if not is_plan_dose(node):
            return None
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["attribute"]
            text = (node.GetAttribute(PLAN_ATTRIBUTE_PREFIX + key) or "").strip() if key else ""
            if key is None or (not text and f.name != "target"):
                continue
            if f.name in _UNSET_ATTRIBUTE and text == _UNSET_ATTRIBUTE[f.name]:
                values[f.name] = None
            elif f.metadata["kind"] == "numbers":
                values[f.name] = parse_numbers(text, f"{node.GetName()} {PLAN_ATTRIBUTE_PREFIX + key}")
            elif f.metadata["kind"] in ("number", "integer"):
                number = float(text)
                values[f.name] = int(number) if f.metadata["kind"] == "integer" else number
            else:
                values[f.name] = text
        return cls(**values)


def _format(kind: str, value) -> str:
    if kind == "number":
        return format_number(value)
    if kind == "integer":
        return str(int(value))
    if kind == "numbers":
        return ",".join(format_number(v) for v in value)
    return str(value)


@dataclass
class DoseResult:
    """What a dose computation (:meth:`MedAIPlanLogic.compute_dose`) measured; an empty one before any run.

    ``beams``: per beam gantry_deg, couch_deg, bixels, isocenter_lps_mm; ``weights``: bixel weights;
    ``timings``: seconds per engine step; ``metrics``: per-structure dose figures (Gy, %; see ``medai dvh``);
    ``beam_nodes``: per-beam dose nodes when asked for; ``dose_grid``: dose grid spacing (mm, i j k);
    ``memory_estimate``: the estimate (GiB) the run was checked against, None when not estimated."""

    beams: list[dict] = field(default_factory=list)
    num_bixels: int = 0
    weights: Any = None
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    dij_nnz: int = 0
    metrics: dict[str, dict] = field(default_factory=dict)
    beam_nodes: list = field(default_factory=list)
    dose_grid: list[float] = field(default_factory=list)
    memory_estimate: dict | None = None


@dataclass
class PlanResult(DoseResult):
    """What a plan (:meth:`MedAIPlanLogic.plan`) measured: the dose figures and the optimisation's.

    ``candidate_angles``: the gantry angles offered (degrees); ``selection_objective``: the greedy beam
    selection's scores (None without ``select_beams``); ``objective``: the final objective value;
    ``objectives``: the objectives used, as dicts."""

    candidate_angles: list[float] = field(default_factory=list)
    selection_objective: Any = None
    iterations: int = 0
    objective: float | None = None
    objectives: list[dict] = field(default_factory=list)

    def optimisation_metrics(self) -> dict:
        """The report's optimisation figures: iterations, objective, selection_objective, candidate_angles."""
        return {
            key: getattr(self, key) for key in ("iterations", "objective", "selection_objective", "candidate_angles")
        }
