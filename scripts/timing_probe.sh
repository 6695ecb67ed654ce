#!/usr/bin/env bash
# The timing probe: the tests whose wall-clock figures hold on a quiet machine only, run
# one file at a time with those figures checked (DTP_TIMING_PROBE=1; tests/support/timing.py).
# Beside the rest of the suite the same tests check bounds that hold under load; run this
# with nothing else going on (scripts/test.sh runs it once the suite has ended).
#   bash scripts/timing_probe.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYBIN=${PYBIN:-.venv/bin}
files=(
  tests/paid/test_rate_smoothness.py
  tests/transport/test_lockout.py
  tests/transport/test_reconnect_flood.py
  tests/transport/test_accept_burst.py
  tests/transport/test_memory_churn.py
  tests/daemon/test_lan_announce.py
)
for file in "${files[@]}"; do
  DTP_TIMING_PROBE=1 $PYBIN/python -m pytest -q -p no:cacheprovider -m "not wheel" "$@" "$file"
done
