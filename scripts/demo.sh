#!/usr/bin/env bash
# The README's main command: set up what the demo needs (a compiler and the headers the C
# core builds with, .venv with the base install: no extra), then run `dtp demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --demo
exec .venv/bin/dtp demo "$@"
