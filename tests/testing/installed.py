"""dtp as a fresh project sees it once installed: a directory standing for site-packages
(the package and the metadata setuptools computes for it, its pytest11 entry point
included), and commands run from a project directory of their own with it on the path
(not this checkout: its tests/ and conftest stay out of reach)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def make_site(where: Path) -> Path:
    """``where/site``: ``dtp`` (this checkout's package) and ``dtp_sui.egg-info``, the
    distribution's metadata (from ``setup.py egg_info`` on a copy of the build inputs)."""
    site, egg, project = where / "site", where / "egg", where / "project"
    for d in (site, egg, project):
        d.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, project / name)
    skip = shutil.ignore_patterns("__pycache__", "*.o", "*.so", "build")
    for name in ("dtp", "dtp_core", "move"):
        shutil.copytree(ROOT / name, project / name, ignore=skip)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg)],
        cwd=project,
        env={**os.environ, "DTP_SKIP_PREFLIGHT": "1"},
        check=True,
        capture_output=True,
        timeout=300,
    )
    (site / "dtp").symlink_to(ROOT / "dtp")
    shutil.copytree(egg / "dtp_sui.egg-info", site / "dtp_sui.egg-info")
    return site


def run_in_project(
    project: Path, site: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``project`` with ``site`` first on the path (and no pytest
    variables of the run that called it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "HYPOTHESIS"))}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
