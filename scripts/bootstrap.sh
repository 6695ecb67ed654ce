#!/usr/bin/env bash
# Make this checkout runnable on a fresh machine: system packages (only if missing),
# a virtualenv in .venv, and the package with its C core built in place.
# Safe to run again: each step is skipped when already done.
#
#   bash scripts/bootstrap.sh          everything the tests need: every extra (dtp-sui[all]),
#                                      the test, dev and bench tools, Chromium, iproute2
#   bash scripts/bootstrap.sh --demo   only what `dtp demo` needs: a compiler, OpenSSL's
#                                      and Python's headers, and the base install with
#                                      dtp-sui[gun,collab] (the demo runs on the embedded
#                                      ledger; its browser step serves a gun.js page with a
#                                      shared Yjs note)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

demo=0
case "${1:-}" in
  --demo) demo=1 ;;
  "") ;;
  *) echo "usage: bash scripts/bootstrap.sh [--demo]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "DTP needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi

need_apt=()
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
[ -f /usr/include/openssl/evp.h ] || need_apt+=(libssl-dev)
if [ "$demo" -eq 0 ]; then
  command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
  # `ip` (iproute2): the two-machine tests run their hosts in network namespaces (tests/support/netns.py)
  { command -v ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; } >/dev/null 2>&1 || need_apt+=(iproute2)
fi
# headless Chromium: the Gun endpoint's test loads its demo page in a real browser
# (tests/graph/test_gun_browser.py, driven over the DevTools protocol), and so does the
# demo's browser step (scripts/demo.sh installs it for --demo). Wanted, not needed: where
# apt cannot install it (a distribution without Debian's package) the rest goes on, the
# demo's step saying what it lacks.
want_apt=()
if [ "$demo" -eq 0 ]; then
  command -v chromium >/dev/null 2>&1 || want_apt+=(chromium)
fi
"$PY" -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
"$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3-dev)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ${#want_apt[@]} -gt 0 ]; then
  log "installing system packages: ${want_apt[*]}"
  { $SUDO apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want_apt[@]}" >/dev/null; } \
    || log "could not install ${want_apt[*]}: the browser tests and the demo's browser step will say so"
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v '^WARNING: Location' || true
fi

# Rebuild when any C source or the builder is newer than the built extension. The full
# install's stamp stands for the demo's too (it holds the base install and more).
so=$(ls dtp/_dtp_core*.so 2>/dev/null | head -n1 || true)
stamp=.venv/.dtp-installed
target='.[all,test,dev,bench]'
what="dtp-sui with every extra and the test tools"
if [ "$demo" -eq 1 ]; then
  target='.[gun,collab]'
  what="dtp-sui with its gun and collab extras (the demo's browser step)"
  [ -f "$stamp" ] || stamp=.venv/.dtp-installed-base
fi
# A .venv made when the distribution was named dtp holds that install: it and dtp-sui
# both own the dtp package and the dtp command, and removing either later would take
# the other's files. It goes first (its files are this checkout's: an editable install),
# and so does the metadata its build left here, dtp.egg-info (from this folder, on the
# path of every `python -m` run in it, it would still say dtp is installed).
old_install=0
(cd .venv && bin/python -c 'import importlib.metadata as m; m.distribution("dtp")') 2>/dev/null && old_install=1
if [ ! -f "$stamp" ] || [ -z "$so" ] || [ "$old_install" -eq 1 ] || [ -n "$(find dtp_core pyproject.toml setup.py -newer "$so" -type f 2>/dev/null | head -n1)" ]; then
  if [ "$old_install" -eq 1 ]; then
    log "removing the install made under the old name, dtp"
    .venv/bin/pip uninstall -q -y dtp 2>&1 | grep -v '^WARNING: Location' || true
    rm -rf dtp.egg-info
  fi
  log "installing $what (builds the C core)"
  PYTHONWARNINGS=ignore .venv/bin/pip install -q -e "$target" 2>&1 | grep -v '^WARNING: Location' || true
  touch "$stamp"
fi
.venv/bin/python -c 'import dtp.native.core as c; assert c.HAVE_NATIVE' \
  || { echo "the C core did not build; see the pip output above" >&2; exit 1; }

# The browser client (web/dtp-client): its pinned npm packages (@noble/curves, ciphers,
# hashes; @mysten/sui, a dev dependency, for the Sui escrow path; package-lock.json), for
# its tests (tests/web, and `npm test` in the folder).
# Wanted, not needed: without npm the tests say what they lack.
if [ "$demo" -eq 0 ]; then
  if command -v npm >/dev/null 2>&1; then
    log "installing the browser client's npm packages (web/dtp-client)"
    sh web/dtp-client/scripts/install.sh \
      || log "could not install web/dtp-client's npm packages: its tests will say so"
  else
    log "npm is not installed: the browser client's tests (tests/web) will be skipped"
  fi
fi
