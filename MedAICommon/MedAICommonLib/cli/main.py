"""Entry point of ``medai``: argument parsing, reports, one-line errors, subcommand discovery."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import traceback

from ..progress import CancelledError, Progress
from .progress_bar import json_progress, set_json_mode
from ..report import Report

# Modules that contribute subcommands, in the order they appear in ``medai --help``.
COMMAND_MODULES = (
    "MedAICommonLib.cli.common_commands",
    "MedAISegLib.commands",
    "MedAISegLib.training_commands",
    "MedAIRegisterLib.commands",
    "MedAIPlanLib.commands",
    "MedAIPlanLib.evaluation_commands",
)


class CommandError(Exception):
    """An expected failure of a command: printed as one line, exit code 1."""


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--report FILE`` and ``--debug``, on every subcommand."""
    parser.add_argument("--report", metavar="FILE", help="write a JSON report of the run to FILE")
    parser.add_argument("--debug", action="store_true", help="show a full traceback on errors")
    parser.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The ``medai`` parser with every available module's subcommands."""
    parser = argparse.ArgumentParser(prog="medai", description="MedAI: segmentation, registration and "
                                     "dose planning on MRML, in 3D Slicer or headless.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        package = module_name.split(".")[0]
        if importlib.util.find_spec(package) is None or importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers, add_common_options)
    return parser


def main(argv=None) -> int:
    """Run ``medai`` with ``argv``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # `Slicer --python-script medai_cli.py -- ARGS` passes a leading "--".
    if argv and argv[0] == "--":
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    report = Report(command=args.command)
    json_mode = bool(getattr(args, "progress_json", False))
    set_json_mode(json_mode)
    args.progress = Progress(json_progress if json_mode else None)
    try:
        code = args.func(args, report)
    except (KeyboardInterrupt, CancelledError):
        print(f"medai {args.command}: cancelled", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one line unless --debug
        if getattr(args, "debug", False):
            traceback.print_exc()
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"medai {args.command}: error: {message}", file=sys.stderr)
        return 1
    if getattr(args, "report", None):
        report.write(args.report)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
