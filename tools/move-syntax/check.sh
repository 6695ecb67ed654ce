#!/bin/sh
# Offline check of Sui Move sources: syntax and the compile errors a parse tree shows
# (see tools/move-syntax/check.mjs).
# Usage: tools/move-syntax/check.sh [file-or-dir ...]   (default: the repository's move/)
here=$(cd "$(dirname "$0")" && pwd)
exec sh "$here/../node-tool.sh" move-syntax "$here" "the Move grammar" check.mjs "$@"
