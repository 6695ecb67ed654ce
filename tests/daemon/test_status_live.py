"""``dtp status`` reads the running daemon's counters live, over its control socket
(``<state_dir>/control.sock``), and the status file only when no daemon answers there.

The file is a durable snapshot written at most twice a second, each write synced twice
by one writer thread: it trails the counters by half a second at best and by the
disk's syncs on top, seconds on a busy disk. The live answer is exact the moment it is
asked."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._control import unix_get
from tests.daemon.metrics_scrape import parse, value
from tests.daemon.tunnel_setup import Setup, echo_roundtrip, service
from tests.support.daemon_procs import ENV, ROOT, wait_until


def dtp_status(state_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtp.cli", "status", "--state-dir", str(state_dir), *options],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def status_json(state_dir: Path, *options: str) -> dict[str, Any]:
    done = dtp_status(state_dir, "--json", *options)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("setup", ["local", "sui"], indirect=True)
def test_dtp_status_shows_every_byte_at_once(setup: Setup) -> None:
    backend = setup.backend()
    provider, _, address = setup.pair(service([backend.info["port"]]))
    state = setup.tmp / "daemon-state"
    total = 0
    for size in (1_000_003, 2_000_011):
        assert echo_roundtrip(address, b"s" * size) == b"s" * size
        total += size
        # asked the moment the echo is back: the provider counted it all, both ways
        row = status_json(state)["services"]["svc7000"]
        assert (row["bytes_in"], row["bytes_out"]) == (total, total)
    asked = time.time()
    live = status_json(state)
    assert live["source"] == "live" and live["running"] is True and live["live"] is True
    assert live["updated"] >= asked  # taken when asked, not when last saved
    assert live["ledger"]["state"] == "ok" and live["ledger"]["calls"] > 0
    row = live["services"]["svc7000"]
    assert row["backends"] == {f"127.0.0.1:{backend.info['port']}": "up"}
    assert row["tunnels"] == 2 and row["connections_open"] in (0, 1)
    table = dtp_status(state).stdout
    assert table.splitlines()[0] == f"daemon: running (pid {provider.info['pid']}), live counters"
    assert table.splitlines()[1].startswith("ledger: ok (")
    # the metrics too, on the control socket (no metrics_listen needed)
    metrics = parse(unix_get(state / "control.sock", "/metrics").decode())
    assert value(metrics, "dtp_service_bytes_total", direction="in", service="svc7000") == total
    # --file: what the daemon last saved, as before
    saved = status_json(state, "--file")
    assert saved["source"] == "file" and "ledger" not in saved


def test_a_daemon_that_does_not_answer_is_read_from_its_file(setup: Setup) -> None:
    """Killed, the daemon leaves its socket file behind; nobody answers on it: the
    status file is read, and says the daemon is not running."""
    backend = setup.backend()
    provider, _, address = setup.pair(service([backend.info["port"]]))
    assert echo_roundtrip(address, b"k" * 1000) == b"k" * 1000
    state = setup.tmp / "daemon-state"
    assert status_json(state)["source"] == "live"
    provider.stop(signal.SIGKILL)
    assert (state / "control.sock").exists()
    status = status_json(state)
    assert status["source"] == "file" and status["running"] is False
    assert dtp_status(state).stdout.startswith("daemon: not running")


def test_a_daemon_stopped_cleanly_removes_its_socket(setup: Setup) -> None:
    backend = setup.backend()
    provider, _, _ = setup.pair(service([backend.info["port"]]))
    state = setup.tmp / "daemon-state"
    assert (state / "control.sock").exists()
    assert provider.stop() == 0
    assert not (state / "control.sock").exists()
    status = status_json(state)
    assert status["source"] == "file" and status["stopped"]


def test_a_backend_down_is_said_below_the_table(setup: Setup) -> None:
    backend = setup.backend()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = closed.getsockname()[1]
    setup.pair(service([backend.info["port"], down]))
    state = setup.tmp / "daemon-state"
    row = wait_until(
        lambda: (
            (r := status_json(state)["services"]["svc7000"])["backends"].get(f"127.0.0.1:{down}")
            == "down"
            and r
        ),
        30,
        "the health check",
    )
    assert row["backends"][f"127.0.0.1:{backend.info['port']}"] == "up"
    assert row["healthy_backends"] == 1
    table = dtp_status(state).stdout
    assert table.splitlines()[-1] == f"service svc7000: backend down: 127.0.0.1:{down}"
