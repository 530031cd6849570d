"""``medai`` subcommands of MedAIPlan: ``dose`` (forward dose) and ``plan`` (beams + optimisation).

Inputs: ``CT SEGMENTATION`` files (read through Slicer's storage nodes) or ``--matrad FILE.mat``
(matRad/pyRadPlan patient: ct + cst). Outputs: the dose volume (Gy, CT grid, ``--output-dose``),
optionally the structures (``--output-segmentation``), per-beam doses (``--per-beam-dir``), and
the run report (``--report``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from MedAICommonLib.cli.inputs import require_inputs
from MedAICommonLib.cli.progress_bar import progress_printer
from MedAICommonLib.progress import Progress

# The bridge, the Logic and the dose engine (numba, torch, SimpleITK, VTK) are imported by the commands once their
# inputs are checked: ``medai plan --help`` and a refused input never pay for them.
from MedAIPlanLib.plan_settings import PlanResult, PlanSettings


def _numbers(text, what):
    if text is None:
        return None
    try:
        return [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError as error:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}.") from error


def _positive(value, option: str, example: str):
    """``value`` when it is None or a positive finite number; else a ``ValueError`` naming ``option``."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ValueError(f"{option} must be a positive number, got {value:g}; give e.g. {option} {example}.")
    return value


def _add_shared(p) -> None:
    p.add_argument("ct", nargs="?", help="CT volume file (HU), unless --matrad is given")
    p.add_argument("segmentation", nargs="?", help="segmentation file (.seg.nrrd), unless --matrad is given")
    p.add_argument("--matrad", metavar="FILE.mat", help="matRad/pyRadPlan patient file with ct and cst")
    p.add_argument("--target", required=True, help="target segment name")
    p.add_argument("--prescription", type=float, help="prescribed dose to the target (Gy, whole plan)")
    p.add_argument("--fractions", type=int, default=1, help="number of fractions (default 1)")
    p.add_argument("--gantry-angles", default="0,51,102,153,204,255,306", help="gantry angles in degrees")
    p.add_argument("--couch-angles", help="couch angles in degrees (one per beam; default 0)")
    p.add_argument("--bixel-width", type=float, default=5.0, help="beamlet width at the isocentre (mm)")
    p.add_argument("--isocenter", help="isocentre 'x,y,z' in LPS mm (default: target centroid)")
    p.add_argument("--dose-grid", type=float, help="dose grid spacing (mm; default: CT grid for dose, 3 for plan)")
    p.add_argument("--hlut", help="HU to electron density table (.hlut or .csv)")
    p.add_argument("--output-dose", required=True, metavar="D.nrrd", help="dose volume file (Gy)")
    p.add_argument("--output-segmentation", metavar="S.seg.nrrd", help="also write the structures")
    p.add_argument(
        "--output-ct",
        metavar="CT.nrrd",
        help="also write the CT (HU) the dose was computed on, e.g. the CT inside a --matrad file",
    )
    p.add_argument("--per-beam-dir", metavar="DIR", help="also write each beam's dose into DIR")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        help="refuse (or coarsen, see --auto-dose-grid) a run estimated above this (default: free memory)",
    )
    p.add_argument(
        "--auto-dose-grid",
        action="store_true",
        help="when the estimate is over the memory limit, use a coarser dose grid instead of refusing",
    )


def register(subparsers, add_common_options) -> None:
    """Add ``dose``, ``plan`` and ``download-base-data``."""
    p = subparsers.add_parser(
        "download-base-data", help="download matRad's photon base data (SHA-256 checked) into the user cache"
    )
    p.add_argument("--url", default=None, help="alternative URL (e.g. a local mirror); the checksum still applies")
    add_common_options(p)
    p.set_defaults(func=cmd_download_base_data)

    p = subparsers.add_parser("dose", help="forward photon dose for given beams and weights")
    _add_shared(p)
    p.add_argument("--weights", metavar="FILE", help="bixel weights (.npy or text, one per bixel)")
    p.add_argument("--beam-weights", help="open-field weight per beam (comma-separated; default 1)")
    add_common_options(p)
    p.set_defaults(func=cmd_dose)
    p = subparsers.add_parser("plan", help="photon plan: beams, dose-influence matrix, fluence optimisation")
    _add_shared(p)
    p.add_argument(
        "--objectives",
        metavar="FILE.json",
        help="objectives: [{structure, type, dose, penalty[, volume]}] (default: built-in / the .mat's)",
    )
    p.add_argument("--select-beams", type=int, help="choose this many of the gantry angles greedily")
    p.add_argument("--iterations", type=int, default=150, help="optimiser iterations")
    add_common_options(p)
    p.set_defaults(func=cmd_plan)


def _load(scene, logic, args, report):
    if args.matrad:
        if args.ct or args.segmentation:
            raise ValueError("Give either CT SEGMENTATION files or --matrad FILE.mat, not both.")
        report.inputs["matrad"] = str(args.matrad)
        return logic.load_matrad(args.matrad)
    if not args.ct or not args.segmentation:
        raise ValueError("Give the CT and segmentation files, or --matrad FILE.mat.")
    from MedAICommonLib import bridge

    report.inputs.update({"ct": str(args.ct), "segmentation": str(args.segmentation)})
    return bridge.load_volume(scene, args.ct), bridge.load_segmentation(scene, args.segmentation)


def _common_kwargs(args):
    _positive(args.dose_grid, "--dose-grid", "3 (mm)")
    _positive(args.bixel_width, "--bixel-width", "5 (mm)")
    if args.fractions < 1:
        raise ValueError(f"--fractions must be at least 1, got {args.fractions}.")
    settings = PlanSettings.from_namespace(args)
    return {
        "gantry_angles": list(settings.gantry_angles),
        "couch_angles": list(settings.couch_angles) or None,
        "bixel_width_mm": settings.bixel_width_mm,
        "isocenter_lps": None if settings.isocenter_lps is None else list(settings.isocenter_lps),
        "device": settings.device,
        "hlut_path": settings.hlut_path,
        "fractions": settings.fractions,
        "per_beam": bool(args.per_beam_dir),
        "memory_limit_gb": _positive(settings.memory_limit_gb, "--memory-limit-gb", "16 (GiB)"),
        "auto_dose_grid": settings.auto_dose_grid,
    }


def _finish(scene, logic, args, report, dose_node, seg_node, ct_node=None) -> int:
    from MedAICommonLib import bridge

    info = logic.last_result
    with report.timed("save"):
        report.outputs["dose"] = str(bridge.save_node(dose_node, args.output_dose))
        if args.output_ct and ct_node is not None:
            report.outputs["ct"] = str(bridge.save_node(ct_node, args.output_ct))
        if args.output_segmentation:
            report.outputs["segmentation"] = str(bridge.save_node(seg_node, args.output_segmentation))
        if args.per_beam_dir:
            folder = Path(args.per_beam_dir)
            report.outputs["beam_doses"] = [
                str(bridge.save_node(n, folder / f"beam_{i:02d}_gantry_{b['gantry_deg']:g}.nrrd"))
                for i, (n, b) in enumerate(zip(info.beam_nodes, info.beams))
            ]
    report.device = info.device
    report.metrics.update(
        {
            "structures": info.metrics,
            "num_bixels": info.num_bixels,
            "dij_nnz": info.dij_nnz,
            "beams": info.beams,
            "engine_timings_s": info.timings,
        }
    )
    if info.memory_estimate:
        report.metrics["memory_estimate"] = info.memory_estimate
        report.parameters["dose_grid_used_mm"] = list(info.dose_grid)
    if isinstance(info, PlanResult):
        report.metrics.update(info.optimisation_metrics())
    target = next((n for n in info.metrics if n.lower() == args.target.lower()), None)
    if target and args.prescription:
        d95 = info.metrics[target].get("D95_Gy")
        report.metrics["target_D95_percent_of_prescription"] = 100.0 * d95 / args.prescription
    return 0


def cmd_dose(args, report) -> int:
    """``medai dose``: forward dose of open fields or given bixel weights."""
    kwargs = _common_kwargs(args)
    require_inputs(args.ct, args.segmentation, args.matrad)
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.logic import MedAIPlanLogic

    scene = get_scene()
    logic = MedAIPlanLogic(scene)
    with report.timed("load"):
        ct, seg = _load(scene, logic, args, report)
    weights = None
    if args.weights:
        path = Path(args.weights)
        if not path.is_file():
            raise ValueError(f"Weights file not found: {path}")
        weights = np.load(path) if path.suffix == ".npy" else np.loadtxt(path)
    report.parameters.update(
        {k: v for k, v in kwargs.items() if k != "device"},
        target=args.target,
        prescription_gy=args.prescription,
        dose_grid_mm=args.dose_grid,
    )
    with report.timed("dose"), progress_printer() as callback:
        dose = logic.compute_dose(
            ct,
            seg,
            args.target,
            weights=weights,
            beam_weights=_numbers(args.beam_weights, "--beam-weights"),
            prescription_gy=args.prescription,
            dose_grid_mm=args.dose_grid,
            progress=Progress(callback),
            **kwargs,
        )
    return _finish(scene, logic, args, report, dose, seg, ct)


def _objectives(args, logic, target):
    from MedAIPlanLib.optimisation.fluence import Objective

    if args.objectives:
        path = Path(args.objectives)
        if not path.is_file():
            raise ValueError(f"Objectives file not found: {path}")
        return [Objective(**o) for o in json.loads(path.read_text())]
    if args.matrad and logic.matrad_structures:
        structures = logic.matrad_structures
        t = next((s for n, s in structures.items() if n.lower() == target.lower()), None)
        ref = next((o["dose"] for o in (t.objectives if t else []) if o["type"] == "squared_deviation"), None)
        scale = args.prescription / ref if ref else 1.0
        out = [
            Objective(s.name, o["type"], o["dose"] * scale, o["penalty"], o.get("volume", 50.0))
            for s in structures.values()
            for o in s.objectives
        ]
        return out or None
    return None


def cmd_plan(args, report) -> int:
    """``medai plan``: beams, dose-influence matrix and fluence optimisation."""
    if args.prescription is None or args.prescription <= 0:
        raise ValueError("medai plan needs a positive --prescription GY.")
    if args.iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {args.iterations}.")
    kwargs = _common_kwargs(args)
    dose_grid = 3.0 if args.dose_grid is None else args.dose_grid
    require_inputs(args.ct, args.segmentation, args.matrad, args.objectives)
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.logic import MedAIPlanLogic

    scene = get_scene()
    logic = MedAIPlanLogic(scene)
    with report.timed("load"):
        ct, seg = _load(scene, logic, args, report)
    objectives = _objectives(args, logic, args.target)
    priorities = {n: s.priority for n, s in logic.matrad_structures.items()} if args.matrad else None
    report.parameters.update(
        {k: v for k, v in kwargs.items() if k != "device"},
        target=args.target,
        prescription_gy=args.prescription,
        dose_grid_mm=dose_grid,
        select_beams=args.select_beams,
        iterations=args.iterations,
        objectives=[o.__dict__ for o in objectives] if objectives else "default",
    )
    with report.timed("plan"), progress_printer() as callback:
        dose = logic.plan(
            ct,
            seg,
            args.target,
            args.prescription,
            dose_grid_mm=dose_grid,
            objectives=objectives,
            select_beams=args.select_beams,
            max_iter=args.iterations,
            priorities=priorities,
            progress=Progress(callback),
            **kwargs,
        )
    return _finish(scene, logic, args, report, dose, seg, ct)


def cmd_download_base_data(args, report) -> int:
    """``medai download-base-data``: fetch photons_Generic.mat at matRad's pinned commit, checked."""
    from MedAIPlanLib.dose.base_data import MACHINE_URL, download_machine

    url = args.url or MACHINE_URL
    with report.timed("download"):
        path = download_machine(url)
    report.inputs["url"] = url
    report.outputs["base_data"] = str(path)
    print(f"photon base data: {path}")
    return 0
