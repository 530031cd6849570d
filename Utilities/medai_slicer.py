"""Run a ``medai`` command inside Slicer: ``Slicer --no-main-window --python-script medai_slicer.py -- ARGS``.

Inside the application the commands work on Slicer's own scene (``slicer.mrmlScene``) with the
application's module logics; the process exits with the command's exit code.
"""

import sys


def _run() -> int:
    try:
        from MedAICommonLib.cli.main import main
    except ImportError:
        print("medai: MedAI's modules are not on Slicer's module path; install the MedAI extension.", file=sys.stderr)
        return 2
    args = sys.argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    return main(args)


if __name__ == "__main__":
    code = _run()
    try:
        import slicer

        slicer.util.exit(code)
    except (ImportError, AttributeError):
        sys.exit(code)
