"""Warnings about suspicious results, raised where they are found and shown where the user is.

Algorithms and Logic call :func:`warn` (a :class:`MedAIWarning`, a ``UserWarning``); they need not know
who listens. The ``medai`` CLI records every one raised during a command and prints it on stderr as
``medai COMMAND: warning: ...`` and in the JSON report under ``warnings``; in Slicer the panels show
them; in plain Python they reach the ``warnings`` machinery as usual.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class MedAIWarning(UserWarning):
    """A result that is computed but suspicious (worse than the start, a changed parameter, ...)."""


def warn(message: str) -> None:
    """Raise a :class:`MedAIWarning` with ``message`` (one sentence: what is suspicious and what to do)."""
    warnings.warn(message, MedAIWarning, stacklevel=2)


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect the messages of every :class:`MedAIWarning` raised in the block (each message once, in order).

    Other warnings (a library's ``DeprecationWarning``, ...) are passed on as if nothing had listened.
    """
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MedAIWarning)
        try:
            yield messages
        finally:
            others = []
            for item in caught:
                if issubclass(item.category, MedAIWarning):
                    if str(item.message) not in messages:
                        messages.append(str(item.message))
                else:
                    others.append(item)
    for item in others:
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno, source=item.source)
