"""Subcommands of the shared layer: ``info``, ``demo``, ``convert``, ``dicom-import``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..devices import describe_devices
from ..progress import Progress
from ..report import versions
from .inputs import require_inputs, require_output_folder
from .progress_bar import progress_printer


def register(subparsers, add_common_options) -> None:
    """Add the shared subcommands."""
    p = subparsers.add_parser("info", help="print versions and available compute devices")
    add_common_options(p)
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser("demo", help="run the end-to-end pipeline on generated data")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for results and overview.png")
    add_common_options(p)
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser("convert", help="read a file through Slicer's storage nodes and write another format")
    p.add_argument("input", help="volume, segmentation, transform, markups or model file")
    p.add_argument("output", help="output file; the extension chooses the format")
    p.add_argument("--kind", choices=["volume", "labelmap", "segmentation", "transform", "markups", "model"])
    add_common_options(p)
    p.set_defaults(func=cmd_convert)

    p = subparsers.add_parser("dicom-import", help="read a DICOM image series into a volume file")
    p.add_argument("input", help="folder with the series (or one file)")
    p.add_argument("output", help="volume file to write (.nrrd, .nii.gz, .mha)")
    p.add_argument("--series-uid", help="which series, when the folder holds several")
    add_common_options(p)
    p.set_defaults(func=cmd_dicom_import)


def cmd_info(args, report) -> int:
    """Print versions and devices as JSON."""
    data = {"versions": versions(), "devices": describe_devices()}
    report.metrics.update(data)
    print(json.dumps(data, indent=2))
    return 0


def cmd_demo(args, report) -> int:
    """Run the demo pipeline."""
    require_output_folder(args.output)
    from ..runtime import get_scene
    from ..synthetic.demo import run_demo

    scene = get_scene()
    if args.progress.callback is not None:  # --progress-json: a worker reports to its parent
        context = run_demo(scene, args.output, report, args.progress)
    else:
        with progress_printer() as callback:
            context = run_demo(scene, args.output, report, Progress(callback))
    for step, reason in report.metrics.get("skipped_steps", {}).items():
        print(f"medai demo: warning: step '{step}' skipped: {reason}", file=sys.stderr)
    print(f"demo: results in {context.output_dir} (overview: {report.outputs['overview']})")
    return 0


def cmd_convert(args, report) -> int:
    """Load through a storage node, save through another."""
    require_inputs(args.input)
    from .. import bridge
    from ..runtime import get_scene

    scene = get_scene()
    node = bridge.load_node(scene, args.input, args.kind)
    out = bridge.save_node(node, args.output)
    report.inputs["input"], report.outputs["output"] = args.input, str(out)
    return 0


def cmd_dicom_import(args, report) -> int:
    """DICOM series -> volume file."""
    require_inputs(args.input)
    from .. import bridge
    from ..runtime import get_scene

    scene = get_scene()
    node, info = bridge.load_dicom_series(scene, args.input, series_uid=args.series_uid)
    for warning in info.warnings:
        print(f"medai dicom-import: warning: {warning}", file=sys.stderr)
    out = bridge.save_node(node, args.output)
    report.inputs.update({"input": args.input, "series_uid": info.series_uid, "files": len(info.files)})
    report.outputs["output"] = str(out)
    report.metrics["warnings"] = info.warnings
    return 0


def output_path(path) -> Path:
    """A Path for an output file, with its folder created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
