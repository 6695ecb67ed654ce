#!/usr/bin/env bash
# The README's main command: set up what is missing, then run `dtp demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dtp demo "$@"
