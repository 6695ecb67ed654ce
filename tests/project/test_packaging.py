"""What `pip install dtp-sui` gets: the sdist's file list and the metadata setuptools computes.

The file list comes from ``setup.py egg_info`` (its SOURCES.txt is what ``sdist`` packs,
the wheel being built from that sdist) run on a copy of the project that also holds what
a worked-in checkout accumulates: a built extension, cffi's generated C, object files, a
virtualenv, keys, ``sui move build`` output. Nothing is compiled and no venv is made.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.paths import ROOT

#: what the sdist is built from (the rest of the checkout never reaches it)
PROJECT_FILES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")
PROJECT_DIRS = ("dtp", "dtp_core", "move", "docs", "licenses")

#: leftovers of a checkout that has been built, tested and deployed from
ARTIFACTS = (
    "dtp/_dtp_core.abi3.so",
    "dtp/_dtp_core.c",
    "dtp/__pycache__/socket.cpython-311.pyc",
    "dtp_core/frame.o",
    "build/lib.linux-x86_64-cpython-311/dtp/_dtp_core.abi3.so",
    ".venv/lib/python3.11/site-packages/stray.py",
    "host.key",
    "dtp/server.dtpkey",
    "move/dtp/Move.lock",
    "move/dtp/build/dtp/BuildInfo.yaml",
    "move/dtp/sources/escrow.move.orig",
    ".pytest_cache/v/cache/lastfailed",
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/test_something.py",
)


def _constant(path: Path, name: str) -> tuple[str, ...]:
    """A module-level tuple/list of strings, read without running the module (setup.py
    calls setup() and build_ffi.py probes the compiler when imported)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list | tuple)
            return tuple(str(item) for item in value)
    raise AssertionError(f"{name} not found in {path}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's build inputs, plus a checkout's usual leftovers."""
    copy = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "build", "Move.lock")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    for rel in ARTIFACTS:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_text("leftover\n", encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def egg_info(project: Path) -> Path:
    """The egg-info setuptools computes for the copy (a fresh one, so no stale
    SOURCES.txt is read back in)."""
    out = project / "egg-base"
    out.mkdir()
    # the file list needs no compiler; a machine without one still checks it
    env = {**os.environ, "DTP_SKIP_PREFLIGHT": "1"}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out)],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out / "dtp_sui.egg-info"


@pytest.fixture(scope="module")
def sdist_files(egg_info: Path) -> set[str]:
    """The sdist's files, relative to the project (the egg-info's own files, named by
    the absolute --egg-base, are left out: the sdist holds them under dtp_sui.egg-info/)."""
    lines = (egg_info / "SOURCES.txt").read_text(encoding="utf-8").splitlines()
    return {line for line in lines if line and not line.startswith("/")}


def test_sdist_holds_what_building_the_c_core_needs(project: Path, sdist_files: set[str]) -> None:
    """Every source build_ffi compiles, every header they include, the builder itself
    and the files setuptools reads."""
    compiled = _constant(project / "dtp_core" / "build_ffi.py", "SOURCES")
    sources = [f"dtp_core/{name}" for name in compiled]
    assert len(sources) >= 5
    needed = {*sources, "dtp_core/build_ffi.py", "dtp_core/dtp_core.h", *PROJECT_FILES}
    for source in [*sources, "dtp_core/dtp_core.h"]:
        text = (project / source).read_text(encoding="utf-8")
        needed |= {f"dtp_core/{h}" for h in re.findall(r'#include "([^"]+)"', text)}
    assert needed <= sdist_files, sorted(needed - sdist_files)


def test_sdist_holds_the_move_package_the_wheel_ships(project: Path, sdist_files: set[str]) -> None:
    """python -m build makes the wheel from the sdist: a Move file setup.py copies into
    dtp/move/dtp but MANIFEST.in leaves out would be missing from the wheel."""
    package = project / "move" / "dtp"
    shipped = {
        f"move/dtp/{path.relative_to(package)}"
        for pattern in _constant(project / "setup.py", "MOVE_FILES")
        for path in package.glob(pattern)
    }
    assert "move/dtp/Move.toml" in shipped and len(shipped) > 10
    assert shipped <= sdist_files, sorted(shipped - sdist_files)
    # README.md points readers at it for the sui CLI and the Move build
    assert "move/README.md" in sdist_files


def test_sdist_holds_the_pypi_page_and_the_licence_notices(sdist_files: set[str]) -> None:
    """pyproject.toml's readme (the short PyPI page) and license-files: a build from the
    sdist reads both, and the wheel's metadata carries the notices."""
    assert {"docs/pypi.md", "LICENSE", "licenses/OpenSSL.txt"} <= sdist_files


def test_sdist_ships_every_module_of_the_package(project: Path, sdist_files: set[str]) -> None:
    """A subpackage without __init__.py is skipped by packages.find: gone from both
    the sdist and the wheel although the code imports it."""
    modules = {
        str(path.relative_to(project))
        for path in (project / "dtp").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert len(modules) > 50
    shipped = {name for name in sdist_files if name.startswith("dtp/") and name.endswith(".py")}
    assert shipped == modules
    assert "dtp/py.typed" in sdist_files


def test_sdist_leaves_out_unrunnable_tests_and_leftovers(sdist_files: set[str]) -> None:
    """No partial test suite (setuptools' default tests/test*.py, without the conftest
    and helpers they import) and nothing a built or deployed checkout leaves behind."""
    assert not [name for name in sdist_files if name.startswith("tests/")]
    leftovers = {rel for rel in ARTIFACTS if not rel.startswith("tests/")}
    assert not sorted(leftovers & sdist_files)
    bad = re.compile(r"\.(so|o|pyc|key|dtpkey|lock|orig)$|(^|/)(build|\.venv|__pycache__)/")
    assert not [name for name in sdist_files if bad.search(name)]


def test_metadata_agrees_with_the_code(egg_info: Path) -> None:
    """One name and one version everywhere, and the console script names a real
    function."""
    import dtp
    import dtp.cli
    from dtp._distribution import NAME

    pkg_info = (egg_info / "PKG-INFO").read_text(encoding="utf-8")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # the distribution's name (what pip installs, the install command of MissingExtra)
    # is pyproject's; the import package keeps its own (the only one shipped)
    assert pyproject["project"]["name"] == NAME == "dtp-sui"
    assert f"\nName: {NAME}\n" in pkg_info
    assert (egg_info / "top_level.txt").read_text(encoding="utf-8").split() == ["dtp"]
    # the all extra names the distribution by its own name (another's would be fetched)
    assert pyproject["project"]["optional-dependencies"]["all"] == [
        f"{NAME}[sui,lan,gun,ws,metrics,fast,collab]"
    ]
    assert f"\nVersion: {dtp.__version__}\n" in pkg_info
    # written once, in dtp/__init__.py: the metadata's is read from there
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dtp.__version__"}
    entry_points = configparser.ConfigParser()
    entry_points.read(egg_info / "entry_points.txt", encoding="utf-8")
    scripts = dict(entry_points["console_scripts"])
    assert scripts == {"dtp": "dtp.cli:main"}
    assert callable(dtp.cli.main)
