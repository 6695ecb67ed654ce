"""The base install (``pip install dtp-sui``, no extra) as a user has it: every module but
those of the extras imports, the embedded-ledger demo runs, and each feature of an extra
asked for says which extra to install, in one line.

The extras' packages are installed here (the suite tests every feature): the processes
under test run with tests/support/no_extras on ``PYTHONPATH``, whose sitecustomize
refuses them as if pip had never installed them. tests/project/test_wheel.py checks
the same in a fresh virtualenv holding the built wheel alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtp._extras import EXTRAS
from tests.support.base_imports import EXTRA_MODULES, extra_of
from tests.support.demo_output import check_demo_output
from tests.support.paths import ROOT

NO_EXTRAS = ROOT / "tests" / "support" / "no_extras"
TIMEOUT = 120.0


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{NO_EXTRAS}{os.pathsep}{ROOT}"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")  # (no deploy record, no default ledger)
    env["HOME"] = str(tmp_path)
    for name in ("DTP_LEDGER", "DTP_SUI_PACKAGE", "DTP_SUI_KEY", "DTP_SUI_RPC"):
        env.pop(name, None)
    return env


def _run(tmp_path: Path, *argv: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_blocker_refuses_every_extra_package() -> None:
    """The simulation covers each extra's modules (dtp._extras.EXTRAS)."""
    finders = list(sys.meta_path)
    sys.path.insert(0, str(NO_EXTRAS))
    try:
        from sitecustomize import BLOCKED  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(NO_EXTRAS))
        sys.modules.pop("sitecustomize", None)
        # (importing it blocks the extras in this process too: not for the tests after)
        sys.meta_path[:] = finders
    assert {module for modules in EXTRAS.values() for module in modules} <= BLOCKED


def test_every_base_module_imports_without_the_extras(tmp_path: Path) -> None:
    done = _run(tmp_path, str(ROOT / "tests" / "support" / "base_imports.py"))
    assert done.returncode == 0, done.stderr
    results: dict[str, str] = json.loads(done.stdout)
    assert len(results) > 300, len(results)
    wrong = {
        name: got
        for name, got in results.items()
        if got != (f"extra:{extra_of(name)}" if extra_of(name) else "ok")
    }
    assert not wrong, wrong
    # each extra's modules were met (the table in base_imports names real modules)
    for prefix in EXTRA_MODULES:
        assert prefix in results, prefix


def test_the_demo_runs_without_the_extras(tmp_path: Path) -> None:
    """`dtp demo` (the embedded ledger, a daemon process it starts, messaging, graph,
    UDP) on the base install: its child processes inherit the blocker."""
    done = _run(tmp_path, "-m", "dtp", "demo", "--quick", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_demo_output(done.stdout)


@pytest.mark.parametrize(
    ("argv", "extra", "named"),
    [
        # the ledger spec is named, before any package record is looked for
        (["-m", "dtp", "balance", "--ledger", "testnet", "0x1"], "sui", "--ledger: Sui testnet"),
        # no identity file: the Sui CLI keystore would be read, which is the sui extra's
        (["-m", "dtp", "balance", "--ledger", "localnet"], "sui", "--ledger: Sui localnet"),
        (["-m", "dtp", "lan", "--timeout", "0.1"], "lan", "LAN discovery"),
        (["-m", "dtp.graph", "gun", "--listen", "127.0.0.1:0"], "gun", "The Gun peer"),
        # (its package's import raises, before its __main__ runs)
        (["-m", "dtp.testing.sui_node", "--port", "0"], "sui", "The Sui node stand-in"),
    ],
)
def test_a_feature_without_its_extra_names_the_extra(
    tmp_path: Path, argv: list[str], extra: str, named: str
) -> None:
    done = _run(tmp_path, *argv)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert named in lines[0] and lines[0].endswith(f"pip install 'dtp-sui[{extra}]'"), lines[0]


def test_open_ledger_names_the_extra(tmp_path: Path) -> None:
    code = (
        "from dtp.errors import MissingExtra\n"
        "from dtp.ledger import open_ledger\n"
        "try:\n"
        "    open_ledger('localnet@http://127.0.0.1:9', package='0x1')\n"
        "except MissingExtra as exc:\n"
        "    assert isinstance(exc, ImportError) and exc.name == 'pysui', exc.name\n"
        "    print(exc.extra, exc)\n"
    )
    done = _run(tmp_path, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sui ledger spec: Sui localnet at http://127.0.0.1:9 needs")
    assert "pip install 'dtp-sui[sui]'" in done.stdout


def test_the_websocket_carrier_names_the_extra(tmp_path: Path) -> None:
    """A ws:// connect and a server's WebSocket listener, without websockets: MissingExtra
    naming the ws extra, before anything connects or listens."""
    code = (
        "import asyncio\n"
        "import dtp.aio\n"
        "from dtp.errors import MissingExtra\n"
        "from dtp.identity.keys import HostIdentity\n"
        "async def main():\n"
        "    try:\n"
        "        await dtp.aio.open_connection('ws://127.0.0.1:9/', timeout=1)\n"
        "    except MissingExtra as exc:\n"
        "        print(exc.extra, exc)\n"
        "    try:\n"
        "        await dtp.aio.start_server(lambda r, w: None, '127.0.0.1', 0,\n"
        "            identity=HostIdentity.generate(), websocket=('127.0.0.1', 0))\n"
        "    except MissingExtra as exc:\n"
        "        print(exc.extra, exc)\n"
        "asyncio.run(main())\n"
    )
    done = _run(tmp_path, "-c", code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        assert line.startswith("ws The WebSocket carrier") and line.endswith(
            "pip install 'dtp-sui[ws]'"
        ), line


@pytest.mark.parametrize(
    ("setting", "key", "extra"),
    [
        ('ledger = "testnet"', "daemon.ledger", "sui"),
        ('ledger = "local"\nlan_announce = true', "daemon.lan_announce", "lan"),
        ('ledger = "local"\nwebsocket_listen = "127.0.0.1:0"', "daemon.websocket_listen", "ws"),
    ],
)
def test_the_daemon_config_names_the_extra(
    tmp_path: Path, setting: str, key: str, extra: str
) -> None:
    """Refused by the config's line before the daemon starts anything (exit 2, as for
    any config error)."""
    config = tmp_path / "dtp.toml"
    config.write_text(f"[daemon]\n{setting}\n", encoding="utf-8")
    done = _run(tmp_path, "-m", "dtp", "daemon", "--config", str(config))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"dtp.toml:{2 if extra == 'sui' else 3}: {key}: " in done.stderr, done.stderr
    assert f"pip install 'dtp-sui[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "dtp-state").exists()  # nothing started
