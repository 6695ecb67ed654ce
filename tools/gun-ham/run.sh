#!/bin/sh
# Run ham.js (GunDB's merge over a stream of updates; see its header) with the pinned
# `gun` package. Usage: tools/gun-ham/run.sh < job.json > answer.json
# Installs the pinned npm dependencies into this directory on first use.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null 2>&1; then
    echo "gun-ham: node is not installed; cannot run GunDB" >&2
    exit 3
fi
# A marker written once the install finished: a node_modules another run is still
# filling (npm ci empties it first) does not count as installed.
installed="$here/node_modules/.dtp-installed"
if [ ! -f "$installed" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "gun-ham: npm is not installed; cannot fetch gun" >&2
        exit 3
    fi
    # runs side by side (the test suites of both core backends) take turns to install
    exec 9>"$here/.install-lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if [ ! -f "$installed" ]; then
        (cd "$here" && npm ci --silent --no-audit --no-fund >&2)
        : >"$installed"
    fi
    exec 9>&-
fi
exec node "$here/ham.js"
