"""``dtp daemon`` catches its stop signals before anything heavy loads: the modules it
installs them from (:mod:`dtp.daemon._signals`, by way of the ``dtp.daemon`` package, and
the ``dtp`` command's own module) import neither asyncio nor the ledger nor the daemon's
config, which take most of a second on a loaded machine, a second in which a SIGTERM
killed the process (dtp.daemon._signals' docstring). The package's re-exports load on
first use (PEP 562) and stay importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dtp.daemon
import dtp.daemon._config

ROOT = Path(__file__).resolve().parents[2]
HEAVY = frozenset(
    {"asyncio", "sqlite3", "dtp.ledger", "dtp.hostid", "dtp.daemon._config", "dtp.daemon._runner"}
)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import dtp.daemon._signals",
        "from dtp.daemon._signals import StopSignals",
        # what `dtp daemon` runs first (dtp.cli.main, before it builds its parser)
        "import dtp.cli\nassert dtp.cli._early_stop_signals(['daemon']) is not None",
    ],
)
def test_the_early_signal_path_imports_nothing_heavy(code: str) -> None:
    loaded = _modules_after(code)
    assert "dtp.daemon._signals" in loaded
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_the_package_re_exports_load_on_first_use() -> None:
    loaded = _modules_after("from dtp.daemon import DaemonConfig, load_config")
    assert "dtp.daemon._config" in loaded
    star: dict[str, object] = {}
    exec("from dtp.daemon import *", star)
    assert star["DaemonConfig"] is dtp.daemon._config.DaemonConfig
    assert star["load_config"] is dtp.daemon._config.load_config
    assert dtp.daemon.DaemonConfig is dtp.daemon._config.DaemonConfig
    with pytest.raises(AttributeError, match="no_such_name"):
        dtp.daemon.no_such_name  # noqa: B018
