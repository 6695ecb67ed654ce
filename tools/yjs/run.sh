#!/bin/sh
# Run yjs.js (Yjs over streams of updates; see its header) with the pinned `yjs`
# package. Usage: tools/yjs/run.sh < job.json > answer.json
#   tools/yjs/run.sh --install    only install (the Gun endpoint serves Yjs's modules
#                                 from here to its pages)
here=$(cd "$(dirname "$0")" && pwd)
exec sh "$here/../node-tool.sh" yjs "$here" yjs "${1:-yjs.js}"
