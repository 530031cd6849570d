"""What the error dialog says when a worker run failed: its real cause first, its stderr tail as details.

Qt-free, so the panels' wording is tested in pytest on real worker results.
"""

from __future__ import annotations

LOG_TAIL_LINES = 30


def job_failure_message(
    heading: str, error: BaseException | str, outcome=None, tail_lines: int = LOG_TAIL_LINES
) -> tuple[str, str]:
    """``(text, details)`` for the error dialog of a failed worker job.

    Args:
        heading: first line, e.g. ``"Segmentation failed."``.
        error: the exception the job raised when it was finished (it usually carries the worker's
            one-line error already).
        outcome: the worker's :class:`~MedAICommonLib.jobs.worker.WorkerResult` (None when the worker never
            started); its ``error`` is added when the exception does not say it, and the last
            ``tail_lines`` lines of its stderr (``log``) become the details.
        tail_lines: how many stderr lines to show in the details.

    The text never ends empty: without any message it says the exit code.
    """
    message = str(error).strip()
    cause = (getattr(outcome, "error", "") or "").strip()
    lines = [heading]
    if message:
        lines.append(message)
    if cause and cause not in message:
        lines.append(cause)
    if len(lines) == 1:
        code = getattr(outcome, "returncode", None)
        lines.append(
            f"The worker ended with exit code {code} and no message."
            if code is not None
            else "The worker ended without a message."
        )
    log = list(getattr(outcome, "log", None) or [])[-tail_lines:]
    details = "\n".join(log) if log else "The worker wrote nothing on its error output."
    return "\n\n".join(lines), details
