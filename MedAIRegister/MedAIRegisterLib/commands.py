"""``medai register``, ``medai icp`` and ``medai landmarks``.

Each writes the transform file Slicer writes for the node that, as the moving node's parent, aligns
it with the fixed node (the file holds ITK's fixed -> moving LPS transform).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from MedAICommonLib.cli.inputs import require_inputs

# The bridge, the Logic and the algorithms (numpy, scipy, numba, SimpleITK, VTK) are imported by the commands once
# their inputs are checked. The choices below are the algorithms' own, written out so that ``--help`` imports none
# of them; Testing/Python/test_cli_lazy_imports.py checks that they match.
ICP_METRICS = ("point-to-point", "point-to-plane")  # pointsets.icp.METRICS
ICP_TRANSFORMS = ("rigid", "similarity", "affine")  # pointsets.icp.TRANSFORMS
MULTI_STARTS = ("none", "centroid", "axes", "all", "sphere")  # pointsets.icp_starts.MULTI_STARTS
UNITS = ("mm", "cm", "m")  # pointsets.icp.UNITS
LANDMARK_METHODS = ("rigid", "similarity", "affine", "tps")  # pointsets.landmarks.METHODS
PRESETS = ("ct-ct", "ct-mr-head", "mr-mr-brain", "pet-ct")  # intensity.intensity_registration.PRESETS
METRIC_CHOICES = ("mattes", "meansquares", "correlation")  # intensity.intensity_registration.METRICS
DEVICES = ("cpu", "simpleitk", "torch", "torch-cpu", "cuda", "auto")  # intensity.intensity_backends.DEVICES

SURFACE_HELP = "model (.vtk .vtp .ply .stl .obj), markups (.mrk.json) or FILE.seg.nrrd:SEGMENT"
MASK_HELP = ("region the metric is computed in: a label map volume (non-zero voxels) or a segmentation, "
             "FILE.seg.nrrd (its first segment) or FILE.seg.nrrd:SEGMENT")


def register(subparsers, add_common_options) -> None:
    """Add the registration subcommands to ``medai``."""
    p = subparsers.add_parser("register", help="intensity-based (MI) registration of two volumes")
    p.add_argument("fixed", help="fixed volume (.nrrd .nii .nii.gz .mha ...)")
    p.add_argument("moving", help="moving volume")
    p.add_argument("--output-transform", required=True, metavar="T.h5", help="transform file to write (.h5 .tfm)")
    p.add_argument("--output-volume", metavar="R.nrrd", help="moving volume resampled onto the fixed grid")
    p.add_argument("--transform", default="rigid", choices=("rigid", "similarity", "affine", "bspline"))
    p.add_argument("--preset", default="auto", choices=("auto", *PRESETS),
                   help="settings for the pair; auto (default): chosen from the volumes' DICOM modality or "
                        "intensities (CT: -1000 HU air), reported as metrics.preset")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="cpu: MedAI's CPU path (numba MI kernel; torch B-spline on the CPU); simpleitk: SimpleITK's "
                        "framework; torch: torch on CUDA if present else CPU; torch-cpu / cuda: torch there; "
                        "auto: cuda if present else cpu")
    p.add_argument("--metric", choices=METRIC_CHOICES,
                   help="override the preset's similarity metric (the panel's 'custom' preset: ct-ct settings with "
                        "this metric); linear registrations by meansquares or correlation run on SimpleITK")
    p.add_argument("--sampling-percentage", type=_percentage, metavar="PERCENT",
                   help="share of the fixed voxels sampled for the metric, in percent (0 < P <= 100; default: the "
                        "preset's)")
    p.add_argument("--fixed-mask", metavar="MASK", help=MASK_HELP)
    p.add_argument("--moving-mask", metavar="MASK", help=MASK_HELP)
    add_common_options(p)
    p.set_defaults(func=run_register)

    p = subparsers.add_parser("icp", help="ICP surface registration")
    p.add_argument("fixed", help=SURFACE_HELP)
    p.add_argument("moving", help=SURFACE_HELP)
    p.add_argument("--output-transform", required=True, metavar="T.h5")
    p.add_argument("--metric", default="point-to-plane", choices=ICP_METRICS)
    p.add_argument("--transform", default="rigid", choices=ICP_TRANSFORMS)
    p.add_argument("--trim", type=_trim, default="auto",
                   help="share of closest pairs used per step (0.05..1), or auto: 0.4 while searching, then the "
                        "measured overlap")
    p.add_argument("--multi-start", default="sphere", choices=MULTI_STARTS,
                   help="initial poses tried: sphere (192 spread rotations; large rotations, partial overlap), "
                        "axes/all (principal axes), centroid or none")
    p.add_argument("--units", default="auto", choices=("auto", *UNITS),
                   help="unit of the surface files' coordinates (auto: metres when they span under 2 units); "
                        "the transform stays in file units, the report is in mm")
    add_common_options(p)
    p.set_defaults(func=run_icp)

    p = subparsers.add_parser("landmarks", help="paired-landmark registration")
    p.add_argument("fixed", help="fixed landmarks (.mrk.json or .fcsv)")
    p.add_argument("moving", help="moving landmarks, same count and order")
    p.add_argument("--output-transform", required=True, metavar="T.h5")
    p.add_argument("--method", default="rigid", choices=LANDMARK_METHODS)
    add_common_options(p)
    p.set_defaults(func=run_landmarks)


def _trim(text: str):
    """``--trim``: "auto" or a share of pairs."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--trim takes auto or a number in 0.05..1, not {text!r}") from None


def _percentage(text: str) -> float:
    """``--sampling-percentage``: a number in (0, 100]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"--sampling-percentage takes a percentage in (0, 100], not {text!r}")
    return value


def _mask_file(spec: str, role: str) -> tuple[str, str | None]:
    """``(file, segment or None)`` of a ``--fixed-mask``/``--moving-mask`` argument; ``ValueError`` if no such file."""
    match = re.match(r"(?i)(.*\.seg\.n(?:rrd|hdr)):(.+)$", spec)
    path, segment = (match.group(1), match.group(2)) if match else (spec, None)
    if not Path(path).is_file():
        raise ValueError(f"--{role}-mask {spec}: no such file (give a label map volume, or a segmentation as "
                         "FILE.seg.nrrd or FILE.seg.nrrd:SEGMENT; only a segmentation has segments to choose).")
    return path, segment


def _load_mask(scene, spec: str | None, role: str):
    """A registration mask from ``--fixed-mask``/``--moving-mask``: a label map volume node or
    ``(segmentation node, segment name)`` (the named segment, else the first), as the Logic takes it."""
    if spec is None:
        return None
    from MedAICommonLib import bridge

    path, segment = _mask_file(spec, role)
    if bridge.guess_kind(path) != "segmentation":
        return bridge.load_volume(scene, path)
    segmentation = bridge.load_segmentation(scene, path)
    names = [info.name for info in bridge.segment_infos(segmentation)]
    if not names:
        raise ValueError(f"--{role}-mask {path} has no segment; give a segmentation with the mask as a segment.")
    if segment is not None and segment not in names:
        raise ValueError(f"No segment '{segment}' in {path}; it has: {', '.join(names)}.")
    return segmentation, segment or names[0]


def run_register(args, report) -> int:
    """Register two volume files and write the transform (and optionally the resampled volume)."""
    require_inputs(args.fixed, args.moving)
    for role, spec in (("fixed", args.fixed_mask), ("moving", args.moving_mask)):
        if spec is not None:
            _mask_file(spec, role)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIRegisterLib.logic import MedAIRegisterLogic

    scene = get_scene()
    logic = MedAIRegisterLogic(scene)
    with report.timed("load"):
        fixed = bridge.load_volume(scene, args.fixed)
        moving = bridge.load_volume(scene, args.moving)
        fixed_mask = _load_mask(scene, args.fixed_mask, "fixed")
        moving_mask = _load_mask(scene, args.moving_mask, "moving")
    report.inputs.update({"fixed": args.fixed, "moving": args.moving})
    report.inputs.update({f"{role}_mask": spec for role, spec in (("fixed", args.fixed_mask),
                                                                  ("moving", args.moving_mask)) if spec})
    from MedAIRegisterLib.registration_settings import RegistrationSettings

    settings = RegistrationSettings.from_namespace(args)
    report.parameters.update(dataclasses.asdict(settings))
    sampling = None if settings.sampling_percentage is None else settings.sampling_percentage / 100.0
    with report.timed("register"):
        node = logic.register_volumes(fixed, moving, settings.transform, settings.preset, settings.device,
                                      fixed_mask=fixed_mask, moving_mask=moving_mask,
                                      resample=bool(args.output_volume), sampling_percentage=sampling,
                                      metric=settings.metric, progress=args.progress)
    report.device = f"{logic.last.backend} ({logic.last.device})"
    with report.timed("save"):
        report.outputs["transform"] = str(bridge.save_node(node, args.output_transform))
        if args.output_volume:
            report.outputs["volume"] = str(bridge.save_node(logic.last_volume, args.output_volume))
    report.metrics.update(logic.last.metrics)
    return 0


def _load_surface(scene, spec: str):
    """A node (or (segmentation, segment) pair) from a surface file argument."""
    from MedAICommonLib import bridge

    lower = spec.lower()
    if ".seg.nrrd:" in lower or ".seg.nhdr:" in lower:
        path, segment = spec.rsplit(":", 1)
        segmentation = bridge.load_segmentation(scene, path)
        names = [info.name for info in bridge.segment_infos(segmentation)]
        if segment not in names:
            raise ValueError(f"No segment '{segment}' in {path}; it has: {', '.join(names)}.")
        return (segmentation, segment)
    kind = bridge.guess_kind(spec)
    if kind == "markups":
        return bridge.load_markups(scene, spec)
    if kind == "model":
        return bridge.load_model(scene, spec)
    raise ValueError(f"{spec} is not a surface; give a {SURFACE_HELP}.")


def run_icp(args, report) -> int:
    """ICP of the moving surface onto the fixed one; writes the transform."""
    require_inputs(args.fixed, args.moving)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIRegisterLib.logic import MedAIRegisterLogic

    scene = get_scene()
    logic = MedAIRegisterLogic(scene)
    with report.timed("load"):
        fixed, moving = _load_surface(scene, args.fixed), _load_surface(scene, args.moving)
    report.inputs.update({"fixed": args.fixed, "moving": args.moving})
    report.parameters.update({"metric": args.metric, "transform": args.transform, "trim": args.trim,
                              "multi_start": args.multi_start, "units": args.units})
    with report.timed("icp"):
        node = logic.register_surfaces(fixed, moving, args.metric, args.transform, args.trim, args.multi_start,
                                       units=args.units)
    with report.timed("save"):
        report.outputs["transform"] = str(bridge.save_node(node, args.output_transform))
    report.metrics.update(logic.last.metrics)
    return 0


def run_landmarks(args, report) -> int:
    """Paired-landmark registration of two markups files; writes the transform."""
    require_inputs(args.fixed, args.moving)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAIRegisterLib.logic import MedAIRegisterLogic

    scene = get_scene()
    logic = MedAIRegisterLogic(scene)
    with report.timed("load"):
        fixed, moving = bridge.load_markups(scene, args.fixed), bridge.load_markups(scene, args.moving)
    report.inputs.update({"fixed": args.fixed, "moving": args.moving})
    report.parameters["method"] = args.method
    with report.timed("fit"):
        node = logic.register_landmarks(fixed, moving, args.method)
    with report.timed("save"):
        report.outputs["transform"] = str(bridge.save_node(node, args.output_transform))
    report.metrics.update(logic.last.metrics)
    return 0
