#!/bin/sh
# Run ham.js (GunDB's merge over a stream of updates; see its header) with the pinned
# `gun` package. Usage: tools/gun-ham/run.sh < job.json > answer.json
here=$(cd "$(dirname "$0")" && pwd)
exec sh "$here/../node-tool.sh" gun-ham "$here" gun "${1:-ham.js}"
