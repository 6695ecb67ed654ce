#!/bin/sh
# Run a Node.js script of one of this folder's tools with that tool's pinned npm
# packages (its package-lock.json), installing them into the tool's folder on first use.
# Usage (from a tool's script): node-tool.sh NAME DIR WHAT --install | SCRIPT [ARGS...]
#   NAME  the tool, for messages; DIR its folder; WHAT the packages, for messages
#   --install: only install (the Gun endpoint serves the packages' browser files)
# Exit status 3: node or npm is not installed.
set -eu
name=$1
here=$2
what=$3
shift 3
if ! command -v node >/dev/null 2>&1; then
    echo "$name: node is not installed; cannot run it" >&2
    exit 3
fi
# A marker written once the install finished: a node_modules another run is still
# filling (npm ci empties it first) does not count as installed.
installed="$here/node_modules/.dtp-installed"
if [ ! -f "$installed" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "$name: npm is not installed; cannot fetch $what" >&2
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
