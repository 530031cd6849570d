"""``python -m MedAICommonLib.cli ARGS``: the ``medai`` command (used by the background worker)."""

import sys

from .main import main

sys.exit(main())
