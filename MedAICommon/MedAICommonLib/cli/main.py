"""Entry point of ``medai``: lazy subcommand registry, reports, warnings, one-line errors.

``medai --help`` lists the commands from :data:`COMMANDS` without importing any module's code, and
``medai COMMAND ...`` imports only the module that defines COMMAND, so a command starts without
paying for the imports of the others (torch, MONAI, numba, ...). Each command module provides
``register(subparsers, add_common_options)``; the frame adds ``--report``, ``--debug``, warnings
(``medai COMMAND: warning: ...`` on stderr and under ``warnings`` in the report), a report also when
the run fails (with ``error``), exit code 130 on Ctrl-C and a one-line error otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import traceback

from .errors import one_line
from .native_logs import quiet_native_logs
from .registry import COMMANDS, command_module


class CommandError(Exception):
    """An expected failure of a command: printed as one line, exit code 1."""


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--report FILE`` and ``--debug``, on every subcommand."""
    parser.add_argument("--report", metavar="FILE", help="write a JSON report of the run to FILE (also when it fails)")
    parser.add_argument("--debug", action="store_true", help="show a full traceback and the VTK/ITK log on errors")
    parser.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="medai",
        description="MedAI: segmentation, registration and dose planning on MRML, in 3D Slicer or headless.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    return parser, subparsers


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``medai`` parser: every command listed; only ``command``'s module imported and its options added.

    With ``command=None`` (``medai --help``) nothing beyond this package is imported.
    """
    parser, subparsers = _top_parser()
    module_name = command_module(command) if command else None
    if module_name is not None:
        importlib.import_module(module_name).register(subparsers, add_common_options)
    for name, (other_module, help_text) in COMMANDS.items():
        if other_module != module_name:
            subparsers.add_parser(name, help=help_text)
    return parser


def _first_command(argv: list[str]) -> str | None:
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


class _Interrupts:
    """Remembers a Ctrl-C even when a library turns the KeyboardInterrupt into another exception.

    Used as a context manager: the previous SIGINT handler comes back afterwards (tests and Slicer call
    :func:`main` in-process).
    """

    def __init__(self) -> None:
        self.seen = False
        self._previous = None

    def __enter__(self) -> _Interrupts:
        with contextlib.suppress(ValueError):  # not the main thread: keep Python's default
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handler(self, signum, frame) -> None:
        self.seen = True
        signal.default_int_handler(signum, frame)


def main(argv=None) -> int:
    """Run ``medai`` with ``argv``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # `Slicer --python-script medai_slicer.py -- ARGS` passes a leading "--".
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = build_parser(_first_command(argv)).parse_args(argv)
    return run_command(args)


def run_command(args) -> int:
    """Run a parsed command with progress, warnings, report and error handling; returns the exit code."""
    from ..notices import collect_warnings
    from ..progress import CancelledError, Progress
    from ..report import Report
    from .progress_bar import json_progress, set_json_mode

    report = Report(command=args.command)
    json_mode = bool(getattr(args, "progress_json", False))
    set_json_mode(json_mode)
    args.progress = Progress(json_progress if json_mode else None)
    debug = bool(getattr(args, "debug", False))
    code, error = 0, None
    with _Interrupts() as interrupts, quiet_native_logs(not debug), collect_warnings() as warnings_seen:
        try:
            code = int(args.func(args, report) or 0)
        except (KeyboardInterrupt, CancelledError):
            code, error = 130, "cancelled"
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line unless --debug
            if interrupts.seen:
                code, error = 130, "cancelled"
            else:
                if debug:
                    traceback.print_exc()
                code, error = 1, one_line(exc)
    for message in warnings_seen:
        print(f"medai {args.command}: warning: {message}", file=sys.stderr)
    if error == "cancelled":
        print(f"medai {args.command}: cancelled", file=sys.stderr)
    elif error is not None:
        print(f"medai {args.command}: error: {error}", file=sys.stderr)
    _write_report(args, report, warnings_seen, error, code)
    return code


def _write_report(args, report, warnings_seen: list[str], error: str | None, code: int) -> None:
    path = getattr(args, "report", None)
    if not path:
        return
    report.warnings = list(warnings_seen)
    report.error = error
    report.exit_code = code
    try:
        report.write(path)
    except OSError as exc:
        print(f"medai {args.command}: error: could not write the report {path}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
