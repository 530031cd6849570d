"""``medai`` plan-evaluation subcommands: ``dvh``, ``gamma``, ``isodose``, ``rt-import``, ``rt-export``.

Dose inputs may be volume files (.nrrd, .nii.gz ...) or RTDOSE (.dcm); structures may be
segmentation files (.seg.nrrd, .seg.vtm) or RTSTRUCT (.dcm). Every command fills the report.
"""

from __future__ import annotations

import math
from pathlib import Path

from typing import TYPE_CHECKING

from MedAICommonLib.cli.inputs import require_inputs
from MedAICommonLib.devices import select_device

if TYPE_CHECKING:
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

# The bridge (VTK, SimpleITK), the Logic, DICOM-RT and the report figures are imported by the commands once their
# inputs are checked: ``--help`` and a refused input never pay for them.


def _floats(text: str | None, option: str = "") -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError as error:
        raise ValueError(f"{option or 'A list option'} needs comma-separated numbers, got {text!r}.") from error
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option or 'A list option'} needs finite numbers, got {text!r}.")
    return values


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _is_dicom(path) -> bool:
    return str(path).lower().endswith(".dcm")


def load_dose(scene, logic: PlanEvaluationLogic, path):
    """A dose volume node from an RTDOSE (.dcm) or a volume file (marked as dose, Gy)."""
    from MedAICommonLib import bridge
    from MedAIPlanLib.evaluation.dose_volume import mark_as_dose_volume

    node = logic.import_rtdose(path) if _is_dicom(path) else mark_as_dose_volume(bridge.load_volume(scene, path))
    dims = node.GetImageData().GetDimensions()
    if min(dims) < 2:
        raise ValueError(f"The dose {path} is {dims[0]}x{dims[1]}x{dims[2]} voxels (I x J x K), a single slice or "
                         "line; DVH, gamma and isodose need a 3D dose with at least 2 voxels along each axis: "
                         "give the whole dose volume.")
    return node


def load_structures(scene, logic: PlanEvaluationLogic, path, reference=None):
    """A segmentation node from an RTSTRUCT (.dcm) or a segmentation / label-map file."""
    from MedAICommonLib import bridge

    if _is_dicom(path):
        return logic.import_rtstruct(path)
    return bridge.load_segmentation(scene, path)


def register(subparsers, add_common_options) -> None:
    """Add the plan-evaluation subcommands."""
    _add_dvh_parser(subparsers, add_common_options)
    _add_gamma_parser(subparsers, add_common_options)
    _add_isodose_parser(subparsers, add_common_options)
    _add_rt_import_parser(subparsers, add_common_options)
    _add_rt_export_parser(subparsers, add_common_options)


def _add_dvh_parser(subparsers, add_common_options) -> None:
    """Add the ``dvh`` command: DVH tables and dose metrics of structures."""
    p = subparsers.add_parser("dvh", help="DVH tables and dose metrics of structures (D98, D95, Dmean, Vx, CI, HI, GI)")
    p.add_argument("dose", help="dose volume file or RTDOSE (.dcm), Gy")
    p.add_argument("segmentation", help="segmentation (.seg.nrrd/.seg.vtm), label map or RTSTRUCT (.dcm)")
    p.add_argument("--segments", help="comma-separated segment names (default: all)")
    p.add_argument("--v-doses", help="doses (Gy) for Vx, comma-separated, e.g. 20,30")
    p.add_argument("--prescription", type=float, help="prescription dose (Gy) for CI, HI and GI")
    p.add_argument("--target", help="target segment for CI/HI/GI")
    p.add_argument("--body", help="body segment for the prescription isodose volume (CI, GI)")
    p.add_argument("--bin-width", type=float, default=0.05, help="DVH bin width (Gy)")
    p.add_argument("--table", help="write the metrics table (.csv)")
    p.add_argument("--dvh-table", help="write the combined cumulative DVH table (.csv)")
    p.add_argument("--report-pdf", metavar="F.pdf", help="write a PDF plan report (metrics, dose overlays, DVH)")
    p.add_argument("--report-png", metavar="F.png", help="write a one-page PNG plan report")
    p.add_argument("--ct", help="CT shown under the dose in the plan report: a volume file, or the matRad/pyRadPlan "
                   "patient .mat the plan was made on")
    p.add_argument("--isodose-levels", help="isodose lines in the plan report, Gy, comma-separated "
                   "(default: 50/80/95/100 %% of the prescription or of the maximum)")
    add_common_options(p)
    p.set_defaults(func=cmd_dvh)


def _add_gamma_parser(subparsers, add_common_options) -> None:
    """Add the ``gamma`` command: 3D gamma index of two doses."""
    p = subparsers.add_parser("gamma", help="3D gamma index of an evaluated dose against a reference dose")
    p.add_argument("reference", help="reference dose (volume file or RTDOSE)")
    p.add_argument("evaluated", help="evaluated dose (volume file or RTDOSE), any grid")
    p.add_argument("--dose-percent", type=float, default=3.0, help="dose-difference criterion (%%)")
    p.add_argument("--dta-mm", type=float, default=3.0, help="distance-to-agreement criterion (mm)")
    p.add_argument("--threshold-percent", type=float, default=10.0, help="low-dose threshold (%% of the reference max)")
    p.add_argument("--local", action="store_true", help="local gamma (dose criterion relative to the local reference dose)")
    p.add_argument("--max-gamma", type=float, default=2.0, help="search stops at this gamma (caps the volume)")
    p.add_argument("--normalization-dose", type=float, help="global normalisation dose (Gy; default reference max)")
    p.add_argument("--interpolation", default="trilinear", choices=["trilinear", "none"],
                   help="trilinear: search the evaluated dose interpolated with --step-mm (default); none: its "
                   "voxel lattice only (SlicerRT's mode)")
    p.add_argument("--step-mm", type=float, help="interpolated search step (mm; default DTA/10, TG-218 asks <= DTA/3)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--output-gamma", metavar="G.nrrd", help="write the gamma volume")
    add_common_options(p)
    p.set_defaults(func=cmd_gamma)


def _add_isodose_parser(subparsers, add_common_options) -> None:
    """Add the ``isodose`` command: isodose surfaces and legend."""
    p = subparsers.add_parser("isodose", help="isodose surfaces (models) and legend of a dose volume")
    p.add_argument("dose", help="dose volume file or RTDOSE")
    p.add_argument("output_dir", help="folder for the isodose models (.vtk) and legend (.csv)")
    p.add_argument("--levels", default="30,50,70,90,95,100,105", help="levels, comma-separated (%% or Gy)")
    p.add_argument("--prescription", type=float, help="prescription (Gy) for %% levels (default: max dose)")
    p.add_argument("--gy", action="store_true", help="levels are in Gy, not %%")
    p.add_argument("--smooth", action="store_true", help="smooth the surfaces")
    add_common_options(p)
    p.set_defaults(func=cmd_isodose)


def _add_rt_import_parser(subparsers, add_common_options) -> None:
    """Add the ``rt-import`` command: DICOM-RT files to MedAI files."""
    p = subparsers.add_parser("rt-import", help="convert RTDOSE/RTSTRUCT/RTPLAN files to MedAI files")
    p.add_argument("inputs", nargs="+", help="DICOM-RT files (.dcm)")
    p.add_argument("--output-dir", required=True, help="folder for dose .nrrd, structures .seg.nrrd, beams .csv")
    p.add_argument("--pixel-mm", type=float, default=1.0, help="in-plane pixel of the RTSTRUCT raster grid (mm)")
    p.add_argument("--reference", metavar="CT.nrrd",
                   help="volume (e.g. the CT) whose grid the RTSTRUCT is rasterised on, instead of --pixel-mm")
    add_common_options(p)
    p.set_defaults(func=cmd_rt_import)


def _add_rt_export_parser(subparsers, add_common_options) -> None:
    """Add the ``rt-export`` command: RTDOSE/RTSTRUCT (and RTPLAN) files."""
    p = subparsers.add_parser("rt-export", help="write a dose and/or segmentation as RTDOSE/RTSTRUCT")
    p.add_argument("output_dir", help="folder for RTDOSE.dcm / RTSTRUCT.dcm")
    p.add_argument("--dose", help="dose volume file (Gy)")
    p.add_argument("--segmentation", help="segmentation file")
    p.add_argument("--bits", type=int, default=32, choices=[16, 32], help="RTDOSE pixel bits")
    g = p.add_argument_group("RTPLAN (MedAI plan beams, rebuilt as the dose engine builds them)")
    g.add_argument("--gantry", help="gantry angles (degrees), comma-separated: also write RTPLAN.dcm")
    g.add_argument("--couch", help="couch angles (degrees), one per gantry angle")
    g.add_argument("--target", help="target segment (bixel field, dose reference)")
    g.add_argument("--isocenter", help="isocentre x,y,z (LPS mm; default: target centroid)")
    g.add_argument("--bixel-width", type=float, default=5.0, help="bixel width (mm)")
    g.add_argument("--beam-mu", help="meterset (MU per fraction) per beam, comma-separated")
    g.add_argument("--prescription", type=float, help="prescription (Gy, total)")
    g.add_argument("--fractions", type=int, default=1, help="number of fractions")
    g.add_argument("--energy", type=float, default=6.0, help="nominal energy (MV)")
    add_common_options(p)
    p.set_defaults(func=cmd_rt_export)

def cmd_dvh(args, report) -> int:
    """``medai dvh DOSE SEGMENTATION``: metrics per structure (and plan indices) in the report."""
    require_inputs(args.dose, args.segmentation, args.ct)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    scene = get_scene()
    logic = PlanEvaluationLogic(scene, args.progress)
    report.inputs.update({"dose": str(args.dose), "segmentation": str(args.segmentation)})
    report.parameters.update({"v_doses_gy": _floats(args.v_doses), "prescription_gy": args.prescription,
                              "target": args.target, "bin_width_gy": args.bin_width})
    with report.timed("load"):
        dose = load_dose(scene, logic, args.dose)
        structures = load_structures(scene, logic, args.segmentation)
    names = [s.strip() for s in args.segments.split(",")] if args.segments else None
    with report.timed("dvh"):
        result = logic.compute_dvh(dose, structures, names, _floats(args.v_doses), args.bin_width,
                                   args.prescription, args.target, args.body)
    report.metrics["structures"] = _finite({k: v for k, v in result.metrics.items() if k != "plan"})
    if "plan" in result.metrics:
        report.metrics["plan"] = _finite(result.metrics["plan"])
    if args.table:
        report.outputs["table"] = str(bridge.save_node(result.metrics_table, args.table))
    if args.dvh_table:
        report.outputs["dvh_table"] = str(bridge.save_node(result.combined_table, args.dvh_table))
    if args.report_pdf or args.report_png:
        from MedAIPlanLib.plan_report_nodes import load_report_ct, write_plan_report_for_nodes

        ct = load_report_ct(scene, args.ct) if args.ct else None
        top = args.prescription or max((m.get("Dmax_Gy", 0.0) for n, m in result.metrics.items() if n != "plan"), default=0.0)
        levels = _floats(args.isodose_levels) or [f * top for f in (0.5, 0.8, 0.95, 1.0)]
        info = {"Dose": Path(args.dose).name, "Structures": Path(args.segmentation).name,
                "Prescription (Gy)": args.prescription, "Target": args.target}
        with report.timed("plan report"):
            for key, out in (("report_pdf", args.report_pdf), ("report_png", args.report_png)):
                if out:
                    report.outputs[key] = str(write_plan_report_for_nodes(
                        out, dose, result, ct_node=ct, structures_node=structures, target=args.target,
                        prescription_gy=args.prescription, isodose_levels_gy=levels,
                        info={k: v for k, v in info.items() if v is not None}))
    for name, m in result.metrics.items():
        if name != "plan" and m.get("volume_cc"):
            print(f"{name}: {m['volume_cc']:.2f} cc  Dmean {m['Dmean_Gy']:.2f} Gy  D95 {m['D95_Gy']:.2f} Gy  "
                  f"Dmax(0.03cc) {m['Dmax_Gy']:.2f} Gy")
    return 0


def cmd_gamma(args, report) -> int:
    """``medai gamma REFERENCE EVALUATED``: pass rate (%) and gamma statistics in the report."""
    require_inputs(args.reference, args.evaluated)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    scene = get_scene()
    logic = PlanEvaluationLogic(scene, args.progress)
    report.inputs.update({"reference": str(args.reference), "evaluated": str(args.evaluated)})
    report.parameters.update({"dose_percent": args.dose_percent, "dta_mm": args.dta_mm,
                              "threshold_percent": args.threshold_percent, "local": args.local,
                              "max_gamma": args.max_gamma, "interpolation": args.interpolation})
    report.device = str(select_device(args.device))
    with report.timed("load"):
        reference = load_dose(scene, logic, args.reference)
        evaluated = load_dose(scene, logic, args.evaluated)
    with report.timed("gamma"):
        node, result = logic.gamma(reference, evaluated, args.dose_percent, args.dta_mm, args.threshold_percent,
                                   args.local, args.max_gamma, args.normalization_dose, args.step_mm, args.device,
                                   interpolation=args.interpolation)
    report.parameters["step_mm"] = result.step_mm
    report.metrics.update(_finite({"pass_rate": result.pass_rate, "evaluated_voxels": result.evaluated_voxels,
                                   "mean_gamma": result.mean_gamma, "max_gamma": result.max_gamma_found,
                                   "normalization_dose_gy": result.normalization_dose}))
    if args.output_gamma:
        report.outputs["gamma"] = str(bridge.save_node(node, args.output_gamma))
    search = f"step {result.step_mm:g} mm" if result.step_mm else "voxel lattice"
    print(f"gamma {args.dose_percent:g}%/{args.dta_mm:g} mm ({'local' if args.local else 'global'}, {search}): "
          f"pass rate {result.pass_rate:.2f} % of {result.evaluated_voxels} voxels")
    return 0


def cmd_isodose(args, report) -> int:
    """``medai isodose DOSE OUTPUT_DIR``: one model file per level reached, and the legend."""
    require_inputs(args.dose)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    scene = get_scene()
    logic = PlanEvaluationLogic(scene, args.progress)
    report.inputs["dose"] = str(args.dose)
    levels = _floats(args.levels, "--levels")
    report.parameters.update({"levels": levels, "prescription_gy": args.prescription, "unit": "Gy" if args.gy else "%"})
    dose = load_dose(scene, logic, args.dose)
    with report.timed("isodose"):
        models, legend, lv = logic.isodose(dose, levels, args.prescription, not args.gy, args.smooth)
    out = Path(args.output_dir)
    files = []
    for n, model in enumerate(models):
        files.append(str(bridge.save_node(model, out / f"isodose_{n:02d}.vtk")))
    report.outputs["models"] = files
    report.outputs["legend"] = str(bridge.save_node(legend, out / "isodose_legend.csv"))
    report.metrics["levels_gy"] = [level.dose_gy for level in lv]
    report.metrics["surfaces"] = len(models)
    return 0


def cmd_rt_import(args, report) -> int:
    """``medai rt-import FILES --output-dir D``: RTDOSE -> .nrrd, RTSTRUCT -> .seg.nrrd, RTPLAN -> beams .csv."""
    require_inputs(*args.inputs, args.reference)
    from MedAIPlanLib.dicomrt import dicom_rt

    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    scene = get_scene()
    logic = PlanEvaluationLogic(scene, args.progress)
    out = Path(args.output_dir)
    report.inputs["files"] = [str(p) for p in args.inputs]
    reference = None
    if args.reference:
        report.inputs["reference"] = str(args.reference)
        reference = bridge.load_volume(scene, args.reference)
    outputs = []
    for path in args.inputs:
        modality = dicom_rt.modality_of(path)
        stem = Path(path).stem
        with report.timed(f"import {stem}"):
            if modality == "RTDOSE":
                node = logic.import_rtdose(path)
                outputs.append(str(bridge.save_node(node, out / f"{stem}.nrrd")))
            elif modality == "RTSTRUCT":
                node = logic.import_rtstruct(path, reference_node=reference, pixel_mm=args.pixel_mm)
                outputs.append(str(bridge.save_node(node, out / f"{stem}.seg.nrrd")))
                report.metrics[f"{stem}_structures_cc"] = logic.structure_volumes_cc(node)
            elif modality == "RTPLAN":
                table, plan = logic.import_rtplan(path)
                outputs.append(str(bridge.save_node(table, out / f"{stem}_beams.csv")))
                report.metrics[f"{stem}_beams"] = len(plan["beams"])
            else:
                raise ValueError(f"{path} is {modality or 'not DICOM-RT'}; rt-import reads RTDOSE, RTSTRUCT and RTPLAN.")
    report.outputs["files"] = outputs
    return 0


def cmd_rt_export(args, report) -> int:
    """``medai rt-export OUTPUT_DIR --dose D --segmentation S [--gantry A,B,.. --target T ...]``."""
    require_inputs(args.dose, args.segmentation)
    from MedAIPlanLib.dicomrt import dicom_rt
    from MedAIPlanLib.dose.beams import check_angles

    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    scene = get_scene()
    logic = PlanEvaluationLogic(scene, args.progress)
    dose = structures = None
    if args.dose:
        report.inputs["dose"] = str(args.dose)
        dose = bridge.load_volume(scene, args.dose)
    if args.segmentation:
        report.inputs["segmentation"] = str(args.segmentation)
        structures = bridge.load_segmentation(scene, args.segmentation)
    gantry = check_angles(_floats(args.gantry), "--gantry") if args.gantry else []
    couch = check_angles(_floats(args.couch), "--couch") if args.couch else []
    with report.timed("export"):
        if gantry:
            if dose is None or structures is None or not args.target:
                raise ValueError("RTPLAN export needs --dose, --segmentation and --target with --gantry.")
            report.parameters.update({"gantry_deg": gantry, "couch_deg": couch,
                                      "target": args.target, "bixel_width_mm": args.bixel_width,
                                      "prescription_gy": args.prescription, "fractions": args.fractions})
            paths = logic.export_plan(args.output_dir, dose, structures, meterset_mu=_floats(args.beam_mu) or None,
                                      energy_mv=args.energy, bits=args.bits, prescription_gy=args.prescription,
                                      fractions=args.fractions, target=args.target, gantry_angles=gantry,
                                      couch_angles=couch or None,
                                      isocenter_lps=_floats(args.isocenter) or None, bixel_width_mm=args.bixel_width)
            report.metrics["beams"] = len(gantry)
        else:
            paths = logic.export_rt(args.output_dir, dose, structures, bits=args.bits)
    report.outputs.update(paths)
    if "RTSTRUCT" in paths:  # every segment of every layer, with its number of contours
        report.metrics["structure_contours"] = {r.name: len(r.contours) for r in dicom_rt.read_rtstruct(paths["RTSTRUCT"])}
    return 0
