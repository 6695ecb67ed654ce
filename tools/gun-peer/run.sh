#!/bin/sh
# Run one of this folder's node scripts with the pinned `gun` package (package-lock.json):
#   tools/gun-peer/run.sh client.js < job.json      a gun.js client (see client.js)
#   tools/gun-peer/run.sh relay.js PORT DIR         gun's own Node relay
#   tools/gun-peer/run.sh bench.js < job.json       gun.js clients putting, timed
#   tools/gun-peer/run.sh --install                 only install (the Gun endpoint
#                                                   serves gun's browser files from here)
here=$(cd "$(dirname "$0")" && pwd)
exec sh "$here/../node-tool.sh" gun-peer "$here" gun "$@"
