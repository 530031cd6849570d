"""Every MedAI self-test inside a running Slicer, then a summary and Slicer's exit code.

Started by ``Testing/Slicer/run_in_slicer.sh`` as
``Slicer --no-main-window --testing --additional-module-paths <the four module folders> --python-script <this>``.
Each module's ``<Module>Test`` class is run the way Slicer's "Reload and Test" runs it
(``slicer.selfTests[<Module>]``, registered by ``ScriptedLoadableModule``); scenarios whose optional
packages are missing are skipped by the tests themselves. The last line printed is
``MEDAI SELFTESTS: PASSED`` or ``MEDAI SELFTESTS: FAILED``; Slicer exits with 0 or 1 accordingly, also
when this script itself breaks, so a headless run never hangs waiting for a window.
"""

import traceback

import slicer

MODULES = ("MedAICommon", "MedAISeg", "MedAIRegister", "MedAIPlan")
MESSAGE_DELAY_MS = 10


def run_module_test(name: str) -> tuple[str, str]:
    """("passed" | "failed", detail) of one module's self-test."""
    tests = getattr(slicer, "selfTests", {})
    if name not in tests:
        return "failed", (
            f"module {name} is not loaded: check --additional-module-paths and the Python console for its import error"
        )
    try:
        tests[name](msec=MESSAGE_DELAY_MS)
    except Exception:  # noqa: BLE001 - the summary reports it; the other modules still run
        return "failed", traceback.format_exc()
    return "passed", ""


def summary_lines(results: dict) -> list[str]:
    """One line per module (with its scenario counts when known), then the verdict line."""
    try:
        from MedAICommonLib.application.self_test import LAST_OUTCOMES, summary
    except ImportError:
        LAST_OUTCOMES, summary = {}, None
    lines = ["", "=" * 72, "MedAI self-tests in Slicer " + slicer.app.applicationVersion]
    for name, (status, detail) in results.items():
        counts = summary(name, LAST_OUTCOMES[name]) if summary and name in LAST_OUTCOMES else name
        lines.append(f"{status.upper():7s} {counts}")
        for outcome in LAST_OUTCOMES.get(name, []):
            if outcome.status != "passed":
                lines.append("        " + outcome.line())
        if status == "failed" and name not in LAST_OUTCOMES:
            lines.extend("        " + line for line in detail.strip().splitlines()[-6:])
    failed = any(status == "failed" for status, _ in results.values())
    lines.append("MEDAI SELFTESTS: " + ("FAILED" if failed else "PASSED"))
    return lines


def main() -> int:
    """Run every module's self-test and print the summary; the exit code Slicer should end with."""
    results = {name: run_module_test(name) for name in MODULES}
    print("\n".join(summary_lines(results)), flush=True)
    return 1 if any(status == "failed" for status, _ in results.values()) else 0


exit_code = 1
try:
    exit_code = main()
except Exception:  # noqa: BLE001 - a broken runner must still end Slicer with a failure
    traceback.print_exc()
    print("MEDAI SELFTESTS: FAILED", flush=True)
finally:
    slicer.util.exit(exit_code)
