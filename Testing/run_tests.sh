#!/usr/bin/env bash
# The fast test suite (what CI runs). Pass extra pytest arguments, e.g. `-m slow` for the slow suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=offscreen MPLBACKEND=Agg
python -m pytest -q -rs "$@"
