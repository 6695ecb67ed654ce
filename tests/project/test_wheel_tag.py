"""The wheel's tag matches the extension it carries: cffi builds ``dtp._dtp_core`` against
the stable ABI (``_dtp_core.abi3.so``), so the wheel is tagged ``cp311-abi3`` and installs
on every CPython the package supports, not on the one it was built with alone.

setup.py is run only as far as its configuration (setuptools' ``stop_after="config"``):
the tag and the extension's file name are what setuptools' own bdist_wheel and build_ext
would use, and nothing is compiled. That the wheel really installs and runs on each
supported CPython is tests/project/test_wheel.py's (a virtualenv per version, in
scripts/test.sh's checks job).
"""

from __future__ import annotations

import re
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
import setuptools  # noqa: F401 - first, so that `distutils` below is setuptools' copy

from distutils.core import run_setup  # isort: skip
from tests.support.paths import ROOT

# cffi itself leaves the limited API off for these builds (the .so is then not abi3)
pytestmark = pytest.mark.skipif(
    hasattr(sys, "gettotalrefcount") or bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="debug and free-threaded CPython builds have no abi3 extensions",
)


@pytest.fixture(scope="module")
def dist() -> Iterator[Any]:
    """setup.py's Distribution once its arguments and pyproject.toml are read."""
    with pytest.MonkeyPatch.context() as patch:
        # cffi_modules names dtp_core/build_ffi.py relative to the project root
        patch.chdir(ROOT)
        # the configuration needs no compiler: skip build_ffi's probe of it
        patch.setenv("DTP_SKIP_PREFLIGHT", "1")
        patch.delenv("DTP_SANITIZE", raising=False)
        yield run_setup("setup.py", script_args=[], stop_after="config")


def _oldest_python() -> str:
    """``3.11`` from pyproject's ``requires-python = ">=3.11"``."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    found = re.fullmatch(r">=\s*(3\.\d+)", pyproject["project"]["requires-python"])
    assert found, pyproject["project"]["requires-python"]
    return found.group(1)


def test_the_extension_is_built_for_the_stable_abi(dist: Any) -> None:
    """What build_ffi.py hands setuptools is a limited-API extension, named as one."""
    (ext,) = dist.ext_modules
    assert ext.name == "dtp._dtp_core"
    assert ext.py_limited_api is True
    # how cffi is told to leave Py_LIMITED_API undefined after all
    assert "_CFFI_NO_LIMITED_API" not in dict(ext.define_macros)
    build_ext = dist.get_command_obj("build_ext")
    build_ext.ensure_finalized()
    assert build_ext.get_ext_filename(ext.name) == "dtp/_dtp_core.abi3.so"


def test_the_wheel_is_tagged_abi3_from_the_oldest_supported_python(dist: Any) -> None:
    """cp311-abi3: any CPython from the oldest requires-python admits (an older floor would
    let pip install it where the package refuses to run, a newer one would lock out 3.11)."""
    bdist_wheel = dist.get_command_obj("bdist_wheel")
    bdist_wheel.ensure_finalized()
    python, abi, _platform = bdist_wheel.get_tag()
    assert (python, abi) == ("cp" + _oldest_python().replace(".", ""), "abi3")
