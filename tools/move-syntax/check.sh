#!/bin/sh
# Offline check of Sui Move sources: syntax and the compile errors a parse tree shows
# (see tools/move-syntax/check.mjs).
# Usage: tools/move-syntax/check.sh [file-or-dir ...]   (default: the repository's move/)
# Installs the pinned npm dependencies into this directory on first use.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null 2>&1; then
    echo "move-syntax: node is not installed; cannot check Move syntax" >&2
    exit 3
fi
# A marker written once the install finished: a node_modules another run is still
# filling (npm ci empties it first) does not count as installed.
installed="$here/node_modules/.dtp-installed"
if [ ! -f "$installed" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "move-syntax: npm is not installed; cannot fetch the Move grammar" >&2
        exit 3
    fi
    # runs side by side (the test suites of both core backends) take turns to install
    exec 9>"$here/.install-lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if [ ! -f "$installed" ]; then
        if [ -f "$here/package-lock.json" ]; then
            (cd "$here" && npm ci --silent --no-audit --no-fund >&2)
        else
            (cd "$here" && npm install --silent --no-audit --no-fund >&2)
        fi
        : >"$installed"
    fi
    exec 9>&-
fi
exec node "$here/check.mjs" "$@"
