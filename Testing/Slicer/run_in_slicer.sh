#!/usr/bin/env bash
# Run every MedAI self-test headless in an installed 3D Slicer, straight from this source tree.
#
#   Testing/Slicer/run_in_slicer.sh PATH_TO_SLICER [TIMEOUT_SECONDS]
#
# PATH_TO_SLICER is the Slicer launcher (e.g. ~/Slicer-5.8.1-linux-amd64/Slicer) or the folder that
# holds it. The four modules are loaded through --additional-module-paths (nothing is installed),
# Slicer runs without its main window in testing mode (it installs no Python package then: scenarios
# whose packages are missing are reported as skipped), Testing/Slicer/run_selftests.py runs each
# module's self-test and prints a summary. Exits 0 when every self-test passed, 1 when one failed,
# 2 on bad usage, 124 when Slicer did not finish in time (default 3600 s).
# On a machine without a display, run it under xvfb-run -a.
set -uo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi

slicer="$1"
time_limit="${2:-3600}"
if [ -d "$slicer" ]; then
  slicer="$slicer/Slicer"
fi
if [ ! -x "$slicer" ]; then
  echo "run_in_slicer.sh: $slicer is not an executable Slicer launcher; give the path of Slicer (or of its folder)." >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
module_paths=()
for module in MedAICommon MedAISeg MedAIRegister MedAIPlan; do
  if [ ! -f "$repo/$module/$module.py" ]; then
    echo "run_in_slicer.sh: $repo/$module/$module.py is missing; run this script from a MedAI checkout." >&2
    exit 2
  fi
  module_paths+=("$repo/$module")
done

log="$(mktemp "${TMPDIR:-/tmp}/medai-selftests.XXXXXX.log")"
echo "MedAI self-tests: $slicer ($("$slicer" --version 2>/dev/null | tail -n 1)), log in $log"
timeout --kill-after=30 "$time_limit" "$slicer" --no-splash --no-main-window --testing --disable-cli-modules \
  --additional-module-paths "${module_paths[@]}" \
  --python-script "$repo/Testing/Slicer/run_selftests.py" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "MedAI self-tests: Slicer did not finish within $time_limit s." >&2
  exit 124
fi
verdict="$(grep -E '^MEDAI SELFTESTS: (PASSED|FAILED)$' "$log" | tail -n 1)"
if [ "$verdict" = "MEDAI SELFTESTS: PASSED" ] && [ "$status" -eq 0 ]; then
  exit 0
fi
if [ -z "$verdict" ]; then
  echo "MedAI self-tests: Slicer ended (exit code $status) before the runner printed its summary." >&2
fi
exit 1
