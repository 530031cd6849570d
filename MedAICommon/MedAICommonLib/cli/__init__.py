"""The ``medai`` command line: shared frame, with subcommands contributed by each module's Lib.

Each module package may provide ``commands.py`` with ``register(subparsers)``; it adds its
subcommands, each with a ``func(args, report) -> int`` default. The frame adds ``--report``,
``--debug`` and one-line error handling to every subcommand.
"""

from .main import main

__all__ = ["main"]
