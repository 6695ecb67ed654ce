"""cffi builder (API mode) for the DTP C core: ``dtp._dtp_core``.

setup.py names this module in ``cffi_modules``; it can also be run directly to build a
variant of the extension into a directory of its own::

    python dtp_core/build_ffi.py --out build/asan --sanitize

The cdef is read from ``dtp_core.h`` (between the CDEF markers), so the header is the
single description of the C API.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "dtp_core.h"
ROOT = HERE.parent
SOURCES = ["frame.c", "aead.c", "flowio.c", "reasm.c", "ham.c", "util.c", "udpio.c", "noise.c"]

WARNINGS = ["-std=c11", "-Wall", "-Wextra", "-Wshadow", "-Wvla", "-Wstrict-prototypes"]
#: Set to 1 by the project's own builds (scripts/test.sh, hence CI): warnings fail the
#: build there, so none creeps in. Never in a user's install: a newer compiler's new
#: warning must not stop ``pip install`` from building a core that is correct.
WERROR_ENV = "DTP_WERROR"
SANITIZE = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
    "-O1",
]


def _cdef_text() -> str:
    text = HEADER.read_text()
    start = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = text.index("/* CDEF-END */")
    return text[start:end]


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def preflight() -> None:
    """Fail early, in one sentence, when the machine lacks what the build needs."""
    cc = _compiler()
    if shutil.which(cc[0]) is None:
        raise SystemExit(
            f"DTP's C core needs a C compiler and '{cc[0]}' was not found: "
            "install one (Debian/Ubuntu: apt-get install gcc) and retry."
        )
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text("#include <openssl/evp.h>\nint main(void){return 0;}\n")
        result = subprocess.run(
            [*cc, "-E", str(probe)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(
                "DTP's C core needs OpenSSL's development headers (openssl/evp.h was not "
                "found): install them (Debian/Ubuntu: apt-get install libssl-dev) and retry."
            )
        pyinc = sysconfig.get_paths()["include"]
        if not (Path(pyinc) / "Python.h").exists():
            raise SystemExit(
                f"DTP's C core needs Python's development headers (Python.h not in {pyinc}): "
                "install them (Debian/Ubuntu: apt-get install python3-dev) and retry."
            )


def make_ffi(sanitize: bool = False, prefix: str = "") -> FFI:
    """The builder. ``prefix`` is prepended to source paths: empty under setup.py,
    which wants paths relative to the project root; absolute for ``ffi.compile``,
    which compiles from inside its build directory."""
    builder = FFI()
    builder.cdef(_cdef_text())
    werror = ["-Werror"] if os.environ.get(WERROR_ENV) == "1" else []
    compile_args = [*WARNINGS, *werror, *(SANITIZE if sanitize else ["-O2"])]
    builder.set_source(
        "dtp._dtp_core",
        '#include "dtp_core.h"\n',
        # setuptools insists on paths relative to setup.py's directory (the project root)
        sources=[f"{prefix}dtp_core/{name}" for name in SOURCES],
        include_dirs=[f"{prefix}dtp_core"],
        libraries=["crypto"],
        extra_compile_args=compile_args,
        extra_link_args=SANITIZE if sanitize else [],
    )
    return builder


if os.environ.get("DTP_SKIP_PREFLIGHT") != "1" and "sdist" not in sys.argv:
    preflight()
ffi = make_ffi(sanitize=os.environ.get("DTP_SANITIZE") == "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to build into")
    parser.add_argument("--sanitize", action="store_true", help="ASan + UBSan build")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = make_ffi(sanitize=args.sanitize, prefix=f"{ROOT}/").compile(
        tmpdir=str(out), verbose=False
    )
    print(path)


if __name__ == "__main__":
    main()
