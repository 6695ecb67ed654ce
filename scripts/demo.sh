#!/usr/bin/env bash
# The README's main command: set up what the demo needs (a compiler and the headers the C
# core builds with, .venv with the base install and dtp-sui[gun,collab], node and chromium
# for the browser step), then run `dtp demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --demo

log() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

# The browser steps (a gun.js page in headless Chromium beside a Python peer; the dApp
# page, whose wallet calls a paid JSON-RPC service over DTP) need node and npm, to fetch
# the gun package and the browser client's @noble packages, and chromium. They
# are installed when missing and the machine allows (apt, as root or through sudo);
# without them the step says what it lacks and the rest of the demo runs.
need=()
if ! command -v node >/dev/null 2>&1; then
  need+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
  need+=(npm)
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
    [ -t 0 ] || SUDO=(sudo -n) # (nobody to type a password: fail at once, not wait)
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
    log "installing for the browser step: ${need[*]}"
    if ! { "${SUDO[@]}" apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need[@]}" >/dev/null; }; then
      log "could not install ${need[*]}: the browser step will say what it lacks"
    fi
  else
    log "${need[*]} missing, and no apt-get (or sudo) to install them: the browser step will say so"
  fi
fi
# gun's browser files, which the demo page loads (pinned by tools/gun-peer/package-lock.json)
if command -v npm >/dev/null 2>&1 && ! sh tools/gun-peer/run.sh --install; then
  log "could not fetch the gun npm package: the browser step will say so"
fi
# Yjs's modules, which the demo page's shared note loads (pinned by tools/yjs/package-lock.json)
if command -v npm >/dev/null 2>&1 && ! sh tools/yjs/run.sh --install; then
  log "could not fetch the yjs npm package: the browser step's shared note will say so"
fi
# the browser client's pinned npm packages (web/dtp-client/package-lock.json), which the
# dApp page loads
if command -v npm >/dev/null 2>&1 && ! sh web/dtp-client/scripts/install.sh; then
  log "could not fetch the browser client's npm packages: the dApp step will say so"
fi
exec .venv/bin/dtp demo --screenshots build/screenshots "$@"
