#!/bin/sh
# Install this package's pinned npm dependencies (package-lock.json) into its
# node_modules, once per version of the lock file (the stamp holds its checksum): the
# Python interop test and the browser test run the client from here. Runs side by side
# (the two core backends' test suites) take turns.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
installed="$here/node_modules/.dtp-installed"
lock=$(cksum <"$here/package-lock.json")
current() { [ -f "$installed" ] && [ "$(cat "$installed")" = "$lock" ]; }
current && exit 0
if ! command -v npm >/dev/null 2>&1; then
    echo "dtp-client: npm is not installed; cannot fetch the @noble packages" >&2
    exit 3
fi
exec 9>"$here/.install-lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if ! current; then
    (cd "$here" && npm ci --silent --no-audit --no-fund >&2)
    echo "$lock" >"$installed"
fi
