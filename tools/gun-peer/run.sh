#!/bin/sh
# Run one of this folder's node scripts with the pinned `gun` package (package-lock.json):
#   tools/gun-peer/run.sh client.js < job.json      a gun.js client (see client.js)
#   tools/gun-peer/run.sh relay.js PORT DIR         gun's own Node relay
#   tools/gun-peer/run.sh bench.js < job.json       gun.js clients putting, timed
#   tools/gun-peer/run.sh --install                 only install (the Gun endpoint
#                                                   serves gun's browser files from here)
# Installs the pinned npm dependencies into this directory on first use.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null 2>&1; then
    echo "gun-peer: node is not installed; cannot run gun.js" >&2
    exit 3
fi
# A marker written once the install finished: a node_modules another run is still
# filling (npm ci empties it first) does not count as installed.
installed="$here/node_modules/.dtp-installed"
if [ ! -f "$installed" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "gun-peer: npm is not installed; cannot fetch gun" >&2
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
if [ "${1:-}" = "--install" ]; then
    exit 0
fi
script=$1
shift
exec node "$here/$script" "$@"
