"""Progress reporting and cancellation for long runs, shared by every Logic."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


class CancelledError(RuntimeError):
    """Raised inside a run when the user pressed Cancel."""


@dataclass
class Progress:
    """Reports ``(stage, fraction 0..1)`` to an optional callback and carries a cancel flag.

    Logic calls :meth:`update` at each step; it raises :class:`CancelledError` once
    :meth:`cancel` has been called (from the GUI thread, a signal handler, or another process).
    """

    callback: Callable[[str, float], None] | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    stage: str = ""
    fraction: float = 0.0

    def update(self, stage: str, fraction: float) -> None:
        """Report progress; raise :class:`CancelledError` if cancelled."""
        self.stage, self.fraction = stage, max(0.0, min(1.0, float(fraction)))
        self.check()
        if self.callback is not None:
            self.callback(self.stage, self.fraction)

    def check(self) -> None:
        """Raise :class:`CancelledError` if cancelled."""
        if self._cancel.is_set():
            raise CancelledError(f"Cancelled during '{self.stage or 'start'}'")

    def cancel(self) -> None:
        """Ask the run to stop at its next progress update."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def sub(self, start: float, end: float) -> Progress:
        """A child reporting into the ``[start, end]`` part of this one (shares the cancel flag)."""
        parent = self

        def forward(stage: str, fraction: float) -> None:
            parent.update(stage, start + (end - start) * fraction)

        return Progress(callback=forward, _cancel=self._cancel)
