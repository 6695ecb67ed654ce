"""The ``dtp`` command: the demo runs end to end and prints what it measured (its
browser step with headless Chromium where chromium and node are, as in CI)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gun_peer
from dtp.cli import dapp_host, main
from dtp.cli._demo_browser import PAGE_TEXT, PYTHON_TEXT
from dtp.daemon._state import StatusBook
from tests.support.browser import chromium_path
from tests.support.demo_output import check_demo_output
from tests.support.paths import ROOT

SHOTS = ROOT / "build" / "screenshots"


def test_version(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["version"]) == 0
    assert "core backend" in capsys.readouterr().out


def test_python_dash_m_dtp_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dtp", "version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "core backend" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dtp", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_no_command_prints_help(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_demo_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    # the browser step needs chromium and gun's files (scripts/demo.sh installs them; in
    # CI they are here): a Python peer and headless Chromium on the demo page chat
    browser = chromium_path() is not None and gun_peer.available()
    if not browser and os.environ.get("CI"):
        pytest.fail("chromium, node and npm are needed for the demo's browser step")
    env = {**os.environ, "DTP_GUN_DIR": str(gun_peer.install())} if browser else None
    shot = SHOTS / "demo-browser-chat.png"
    started = time.time()
    result = subprocess.run(
        # (no --browser-wait: with no terminal, the page stays up its few seconds and the
        # demo goes on by itself, as in CI)
        [sys.executable, "-m", "dtp.cli", "demo", "--quick", "--screenshots", str(SHOTS)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[7/12] A browser on the graph: a gun.js page and a Python peer" in out
    if browser:
        # what the Python peer received from the page, across the Gun endpoint and DTP
        received = re.search(r"the Python peer received it over DTP sync in [\d.]+ s: (.*)", out)
        assert received is not None, out
        message = json.loads(received[1])
        assert message["who"] == "chromium" and message["text"] == PAGE_TEXT
        assert f'python: "{PYTHON_TEXT}"' in out and "the page shows it live" in out
        assert f"a screenshot of the page: {shot}" in out
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000
        assert shot.stat().st_mtime >= started - 1  # this run's
        with capsys.disabled():
            print(f"\n[screenshot] {shot}")
        assert "browser: a gun.js page and a Python peer chatted" in out
    else:
        assert "skipped:" in out or "no headless browser" in out
    page = re.search(r"open (http://127\.0\.0\.1:\d+/) in a browser", out)
    assert page is not None or "skipped:" in out, out
    assert "what you write in the next 5 s" in out or "skipped:" in out
    # the dApp step: the page's address for a person, and a wallet-identified paid call
    assert "[8/12] A dApp: a wallet-identified page calls a paid JSON-RPC backend" in out
    dapp = re.search(r"open (http://127\.0\.0\.1:\d+/demo/dapp\.html) in a browser", out)
    if browser and dapp_host.missing_client() is None:
        assert dapp is not None, out
        wallet = re.search(r"a wallet-identified call: whoami -> (0x[0-9a-f]{64})", out)
        assert wallet is not None, out
        assert f"the wallet {wallet[1]} opened escrow" in out  # the page's own wallet
        assert "the provider claimed 75 MIST from the escrow (read from the ledger)" in out
        assert "the ledger refused its escrow (FirewallDenied)" in out
        assert "dapp: a wallet-identified page (run by chromium) made three paid" in out
        assert (SHOTS / "demo-dapp.png").stat().st_mtime >= started - 1
    else:
        assert "dapp: " in out and ("skipped" in out or "run by node" in out)
    check_demo_output(out)


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """`dtp status | head -1`: the pipe closes before dtp writes."""
    book = StatusBook.open(tmp_path)
    for i in range(2000):  # more than a pipe buffer holds
        book.service(f"service-{i}").bytes_in = i
    book.save(force=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtp", "status", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the interpreter has started
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 128 + signal.SIGPIPE
