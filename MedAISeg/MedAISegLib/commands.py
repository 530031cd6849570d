"""``medai`` subcommands of MedAISeg: ``denoise``, ``segment``, ``evaluate``, ``lesions``, ``explain``.

Files are read and written through Slicer's storage nodes (:mod:`MedAICommonLib.bridge`); every
command fills the run :class:`~MedAICommonLib.report.Report` (``--report FILE``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

from MedAICommonLib.cli.inputs import require_inputs
from MedAICommonLib.cli.progress_bar import progress_printer
from MedAICommonLib.progress import Progress

from MedAISegLib.results import (DenoiseResult, EvaluationResult, ExplainResult, LesionResult, ModelSegmentationResult,
                                 report_metrics)
from MedAISegLib.run_settings import ModelSegmentationSettings

# bridge, runtime (MRML), the Logic and its algorithms are imported by the commands once their inputs are checked:
# ``medai COMMAND --help`` and a refused input never pay for VTK, SimpleITK, torch or MONAI.


def register(subparsers, add_common_options) -> None:
    """Add MedAISeg's subcommands."""
    for add in (_add_denoise, _add_segment, _add_evaluate, _add_lesions, _add_explain):
        add(subparsers, add_common_options)


def _add_denoise(subparsers, add_common_options) -> None:
    p = subparsers.add_parser("denoise", help="denoise / enhance a volume (NLM on GPU or CPU, diffusion, CLAHE, N4)")
    p.add_argument("input", help="volume file or DICOM series folder")
    p.add_argument("output", help="output volume file (.nrrd, .nii.gz, ...)")
    p.add_argument("--method", required=True, choices=["nlm", "anisotropic", "curvature", "clahe", "n4"])
    p.add_argument("--device", default="auto", help="auto, cuda or cpu (NLM)")
    p.add_argument("--h", type=float, help="NLM filter strength (input units; default 0.8 x noise sigma)")
    p.add_argument("--sigma", type=float, help="NLM noise sigma (input units; default estimated)")
    p.add_argument("--patch-radius", type=int, default=1, help="NLM patch radius (voxels)")
    p.add_argument("--search-radius", type=int, default=3, help="NLM search radius (voxels)")
    p.add_argument("--nlm-mode", choices=["voxelwise", "blockwise"], default="blockwise",
                   help="NLM weights per block (Coupe 2008; default, the fastest) or per voxel")
    p.add_argument("--block-step", type=int, default=2, help="blockwise NLM: block step (voxels)")
    p.add_argument("--iterations", type=int, default=5, help="anisotropic/curvature diffusion iterations")
    add_common_options(p)
    p.set_defaults(func=cmd_denoise)


def _add_segment(subparsers, add_common_options) -> None:
    p = subparsers.add_parser("segment", help="segment a volume: threshold, Otsu, region growing or an AI model")
    p.add_argument("input", help="volume file or DICOM series folder")
    p.add_argument("output", help="output segmentation (.seg.nrrd)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--method", choices=["threshold", "otsu", "region-growing"])
    group.add_argument("--model", metavar="BUNDLE_DIR|FILE", help="MONAI bundle folder or TorchScript file with card")
    p.add_argument("--lower", type=float, help="lower threshold (input units, e.g. HU)")
    p.add_argument("--upper", type=float, help="upper threshold (input units, e.g. HU)")
    p.add_argument("--seeds", help="region-growing seeds: a markups file or 'R,A,S;R,A,S' in mm (write --seeds=-10,5,3 when the first is negative)")
    p.add_argument("--confidence", action="store_true", help="confidence-connected region growing")
    p.add_argument("--classes", type=int, default=2, help="Otsu classes")
    p.add_argument("--extra-input", action="append", default=[], help="more model inputs (channels), in order")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (models)")
    p.add_argument("--uncertainty", metavar="FILE", help="also write the voxel-wise entropy volume (nats; models)")
    p.add_argument("--probabilities", metavar="FILE",
                   help="also write class probabilities (models): FILE gets the foreground probability (1 - "
                        "background; the class itself for one-class models); a FILE containing {label} gets one "
                        "file per class, e.g. prob_{label}.nrrd")
    p.add_argument("--trust-bundle", action="store_true",
                   help="trust the MONAI bundle given with --model as it is now (its configs can run Python code); "
                        "recorded in the per-user trust store. Catalogue downloads are trusted already")
    add_common_options(p)
    p.set_defaults(func=cmd_segment)


def _add_evaluate(subparsers, add_common_options) -> None:
    p = subparsers.add_parser("evaluate", help="compare a segmentation with a reference (Dice, HD95, ...)")
    p.add_argument("reference", help="reference segmentation (.seg.nrrd) or label map")
    p.add_argument("prediction", help="segmentation (.seg.nrrd) or label map to evaluate")
    p.add_argument("--table", help="also write the metrics table (.csv)")
    p.add_argument("--label-names", metavar="MAP",
                   help="names of a label map's values, '1=spleen,2=kidney_right' or a file of 'value name' lines "
                   "(a Slicer color table works); segments are paired by name only")
    add_common_options(p)
    p.set_defaults(func=cmd_evaluate)


def _add_lesions(subparsers, add_common_options) -> None:
    p = subparsers.add_parser("lesions", help="detect lesions: connected components -> points and a table")
    p.add_argument("input", help="segmentation (.seg.nrrd), label map or probability volume")
    p.add_argument("--intensity", help="volume for mean/max intensity (and the grid to use)")
    p.add_argument("--segment", help="only this segment (by name)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for probability volumes")
    p.add_argument("--min-volume", type=float, default=0.0, help="ignore lesions below this volume (mm3)")
    p.add_argument("--points", help="write the lesion centroids (.mrk.json)")
    p.add_argument("--table", help="write the lesion table (.csv)")
    add_common_options(p)
    p.set_defaults(func=cmd_lesions)


def _add_explain(subparsers, add_common_options) -> None:
    p = subparsers.add_parser("explain", help="saliency map (Grad-CAM or gradient x input) of a model for one label")
    p.add_argument("input", help="volume file or DICOM series folder")
    p.add_argument("--model", required=True, metavar="BUNDLE_DIR|FILE",
                   help="MONAI bundle folder or TorchScript file with card")
    p.add_argument("--output", required=True, metavar="SALIENCY.nrrd", help="explanation volume, 0..1 on the input grid")
    p.add_argument("--segment", help="label to explain, by name (default: the model's first label)")
    p.add_argument("--method", default="auto", choices=["auto", "gradcam", "gradient"],
                   help="auto (default): Grad-CAM, or gradient x input for a bare TorchScript model")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--trust-bundle", action="store_true",
                   help="trust the MONAI bundle given with --model as it is now (its configs can run Python code); "
                        "recorded in the per-user trust store")
    add_common_options(p)
    p.set_defaults(func=cmd_explain)


def _load_input(scene, path):
    from MedAICommonLib import bridge

    path = Path(path)
    if path.is_dir():
        node, info = bridge.load_dicom_series(scene, path)
        for warning in info.warnings:
            print(f"medai: warning: {warning}", file=sys.stderr)
        return node
    return bridge.load_volume(scene, path)


def _load_segmentation(scene, path, label_names: dict | None = None):
    from MedAICommonLib import bridge

    return bridge.load_segmentation(scene, path, segment_names=label_names)


def label_names(text: str | None) -> dict[int, str] | None:
    """``{value: name}`` from '1=spleen,2=kidney_right' or a file of 'value name ...' lines ('#' comments)."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        pairs = [line.split()[:2] for line in path.read_text().splitlines() if line.strip() and line[0] != "#"]
    else:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    try:
        names = {int(value): name.strip() for value, name in pairs}
    except ValueError as error:
        raise ValueError(f"--label-names needs 'value=name' pairs separated by commas or a file of 'value name' "
                         f"lines, got {text!r}.") from error
    if not names or not all(names.values()):
        raise ValueError(f"--label-names gives no name for some value: {text!r}.")
    return names


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def cmd_denoise(args, report) -> int:
    """``medai denoise INPUT OUTPUT --method ...``."""
    require_inputs(args.input)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.logic import MedAISegLogic

    scene = get_scene()
    report.inputs["input"] = str(args.input)
    with report.timed("load"):
        node = _load_input(scene, args.input)
    params = {}
    if args.method == "nlm":
        params = {"patch_radius": args.patch_radius, "search_radius": args.search_radius, "mode": args.nlm_mode}
        if args.nlm_mode == "blockwise":
            params["block_step"] = args.block_step
        if args.h is not None:
            params["h"] = args.h
        if args.sigma is not None:
            params["sigma"] = args.sigma
    elif args.method in ("anisotropic", "curvature"):
        params = {"iterations": args.iterations}
    report.parameters.update({"method": args.method, **params})
    logic = MedAISegLogic(scene)
    with report.timed(args.method), progress_printer() as callback:
        out = logic.denoise(node, args.method, device=args.device, progress=Progress(callback), **params)
    report.device = logic.last_result_as(DenoiseResult).device
    with report.timed("save"):
        report.outputs["output"] = str(bridge.save_node(out, args.output))
    before, after = bridge.array_from_volume(node)[0], bridge.array_from_volume(out)[0]
    report.metrics.update({"input_std": float(np.std(before)), "output_std": float(np.std(after))})
    return 0


def _parse_seeds(scene, text):
    if text is None:
        raise ValueError("Region growing needs --seeds (a markups file or 'R,A,S;R,A,S' in mm).")
    if Path(text).exists():
        from MedAICommonLib import bridge

        return bridge.load_markups(scene, text)
    try:
        return np.array([[float(v) for v in point.split(",")] for point in text.split(";") if point.strip()])
    except ValueError as error:
        raise ValueError(f"Cannot read seeds {text!r}: give a markups file or 'R,A,S;R,A,S' in mm.") from error


def cmd_segment(args, report) -> int:
    """``medai segment INPUT OUTPUT.seg.nrrd --method ...|--model ...``."""
    require_inputs(args.input, *args.extra_input)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.logic import MedAISegLogic

    scene = get_scene()
    report.inputs["input"] = str(args.input)
    with report.timed("load"):
        node = _load_input(scene, args.input)
        extra = [_load_input(scene, p) for p in args.extra_input]
    logic = MedAISegLogic(scene)
    with report.timed("segment"), progress_printer() as callback:
        progress = Progress(callback)
        if args.model:
            report.inputs["model"] = str(args.model)
            settings = ModelSegmentationSettings.from_namespace(args)
            report.parameters.update(dataclasses.asdict(settings))
            seg = logic.segment_with_model([node, *extra], settings.model, device=settings.device,
                                           flip_tta=settings.tta, return_entropy=bool(args.uncertainty),
                                           return_probabilities=bool(args.probabilities),
                                           trust_bundle=settings.trust_bundle, progress=progress)
            report.device = logic.last_result_as(ModelSegmentationResult).device
        elif args.method == "threshold":
            report.parameters.update({"method": "threshold", "lower": args.lower, "upper": args.upper})
            seg = logic.threshold(node, args.lower, args.upper, progress=progress)
        elif args.method == "otsu":
            report.parameters.update({"method": "otsu", "classes": args.classes})
            seg = logic.otsu(node, args.classes, progress=progress)
        else:
            method = "confidence" if args.confidence else "connected"
            report.parameters.update({"method": "region-growing", "mode": method, "lower": args.lower,
                                      "upper": args.upper, "seeds": args.seeds})
            seg = logic.region_growing(node, _parse_seeds(scene, args.seeds), method, lower=args.lower,
                                       upper=args.upper, progress=progress)
    info = report_metrics(logic.last_result)
    with report.timed("save"):
        report.outputs["output"] = str(bridge.save_node(seg, args.output))
        if args.uncertainty:
            entropy = scene.GetFirstNodeByName(f"{node.GetName()} uncertainty")
            report.outputs["uncertainty"] = str(bridge.save_node(entropy, args.uncertainty))
        if args.probabilities:
            report.outputs.update(_save_probabilities(scene, node, seg, args.probabilities))
    report.metrics.update(info)
    report.metrics["segments"] = [s.name for s in bridge.segment_infos(seg)]
    return 0


def _save_probabilities(scene, node, seg, target: str) -> dict:
    """Write the probability volumes the Logic made (see ``--probabilities``); returns report outputs."""
    from MedAICommonLib import bridge

    names = [s.name for s in bridge.segment_infos(seg)]
    volumes = {name: scene.GetFirstNodeByName(f"{node.GetName()} probability {name}") for name in names}
    if "{label}" in target:
        return {f"probability {name}": str(bridge.save_node(volume, target.replace("{label}", name.replace(" ", "_"))))
                for name, volume in volumes.items()}
    if len(volumes) == 1:
        return {"probability": str(bridge.save_node(next(iter(volumes.values())), target))}
    arrays = [bridge.array_from_volume(volume) for volume in volumes.values()]
    foreground = np.clip(np.sum([a for a, _ in arrays], axis=0), 0.0, 1.0).astype(np.float32)
    total = bridge.create_volume(scene, foreground, arrays[0][1], f"{node.GetName()} foreground probability")
    return {"probability": str(bridge.save_node(total, target))}


def cmd_evaluate(args, report) -> int:
    """``medai evaluate REFERENCE PREDICTION``: per-segment metrics in the report (by segment name)."""
    require_inputs(args.reference, args.prediction)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.logic import MedAISegLogic

    scene = get_scene()
    report.inputs.update({"reference": str(args.reference), "prediction": str(args.prediction)})
    names = label_names(args.label_names)
    report.parameters["label_names"] = names
    with report.timed("load"):
        reference = _load_segmentation(scene, args.reference, names)
        prediction = _load_segmentation(scene, args.prediction, names)
    logic = MedAISegLogic(scene)
    with report.timed("evaluate"):
        table = logic.evaluate(reference, prediction)
    metrics = logic.last_result_as(EvaluationResult).metrics
    report.metrics["segments"] = {name: {k: _finite(v) for k, v in values.items()} for name, values in metrics.items()}
    dice = [m["dice"] for m in metrics.values()]
    report.metrics["mean_dice"] = float(np.mean(dice)) if dice else None
    if args.table:
        report.outputs["table"] = str(bridge.save_node(table, args.table))
    for name, values in metrics.items():
        print(f"{name}: Dice {values['dice']:.3f}  HD95 {values['hd95_mm']:.2f} mm")
    return 0


def cmd_lesions(args, report) -> int:
    """``medai lesions INPUT [--intensity VOL] [--points P.mrk.json] [--table T.csv]``."""
    require_inputs(args.input, args.intensity)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.logic import MedAISegLogic

    scene = get_scene()
    report.inputs["input"] = str(args.input)
    with report.timed("load"):
        # .seg.nrrd -> segments; any other volume is a label map or probability map (>= --threshold)
        if bridge.guess_kind(args.input) == "segmentation":
            source = _load_segmentation(scene, args.input)
        elif args.segment:
            raise ValueError("--segment needs a .seg.nrrd segmentation; label/probability volumes are used whole.")
        else:
            source = bridge.load_volume(scene, args.input)
        intensity = bridge.load_volume(scene, args.intensity) if args.intensity else None
    logic = MedAISegLogic(scene)
    with report.timed("lesions"):
        markups, table = logic.detect_lesions(source, intensity_node=intensity, segment_name=args.segment,
                                              probability_threshold=args.threshold, min_volume_mm3=args.min_volume)
    report.parameters.update({"segment": args.segment, "threshold": args.threshold, "min_volume_mm3": args.min_volume})
    report.metrics["lesions"] = [
        {"label": les["label"], "volume_mm3": les["volume_mm3"], "max_diameter_mm": les["max_diameter_mm"],
         "centroid_ras_mm": [float(c) for c in les["centroid_ras"]], "mean_intensity": les["mean_intensity"],
         "max_intensity": les["max_intensity"]} for les in logic.last_result_as(LesionResult).lesions]
    report.metrics["count"] = len(report.metrics["lesions"])
    if args.points:
        report.outputs["points"] = str(bridge.save_node(markups, args.points))
    if args.table:
        report.outputs["table"] = str(bridge.save_node(table, args.table))
    print(f"{report.metrics['count']} lesion(s)")
    return 0


def cmd_explain(args, report) -> int:
    """``medai explain INPUT --model MODEL --output SALIENCY.nrrd``: see ``MedAITrainingLogic.explain``."""
    require_inputs(args.input)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.inference.bundle import is_bundle
    from MedAISegLib.inference.bundle_trust import record_trust
    from MedAISegLib.training_logic import MedAITrainingLogic

    scene = get_scene()
    report.inputs.update({"input": str(args.input), "model": str(args.model)})
    report.parameters.update({"segment": args.segment, "method": args.method, "device": args.device,
                              "trust_bundle": args.trust_bundle})
    args.progress.update("loading", 0.0)
    with report.timed("load"):
        node = _load_input(scene, args.input)
    if args.trust_bundle and is_bundle(Path(args.model)):
        record_trust(args.model)
    logic = MedAITrainingLogic(scene)
    args.progress.update("explaining", 0.1)
    with report.timed("explain"):
        saliency = logic.explain(node, args.model, segment_name=args.segment, device=args.device, method=args.method)
    explained = logic.last_result_as(ExplainResult)
    report.device = explained.device
    args.progress.update("saving", 0.95)
    with report.timed("save"):
        report.outputs["output"] = str(bridge.save_node(saliency, args.output))
    report.metrics.update(dataclasses.asdict(explained))
    report.metrics["name"] = saliency.GetName()
    args.progress.update("done", 1.0)
    return 0
