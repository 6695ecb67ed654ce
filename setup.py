import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# Everything else lives in pyproject.toml; setuptools needs setup.py for cffi_modules, and
# for shipping the Move package (move/dtp, outside the Python package) inside it.

ROOT = Path(__file__).resolve().parent
MOVE_PACKAGE = ROOT / "move" / "dtp"
# what `sui move build` and `sui client publish` read; the build/ they write is not shipped
MOVE_FILES = ("Move.toml", "sources/*.move", "tests/*.move")


class BuildPyWithMove(build_py):
    """build_py that also copies move/dtp to dtp/move/dtp, where an installed `dtp deploy`
    finds it (a checkout's own move/dtp comes first; dtp.cli._ledger)."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "dtp" / "move" / "dtp"
        if target.exists():
            shutil.rmtree(target)
        for pattern in MOVE_FILES:
            for source in sorted(MOVE_PACKAGE.glob(pattern)):
                dest = target / source.relative_to(MOVE_PACKAGE)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)


# cffi builds dtp._dtp_core against the stable ABI (Py_LIMITED_API, hence _dtp_core.abi3.so),
# so the wheel can say so: tagged cp311-abi3 it installs on every CPython from 3.11 (the
# oldest the project supports), not on 3.11 alone.
LIMITED_API = "cp311"

setup(
    cffi_modules=["dtp_core/build_ffi.py:ffi"],
    cmdclass={"build_py": BuildPyWithMove},
    options={"bdist_wheel": {"py_limited_api": LIMITED_API}},
)
