"""The service manager's notify protocol (systemd ``Type=notify``): a ``dtp daemon``
started with ``$NOTIFY_SOCKET`` naming a datagram socket the test made -- what systemd
hands a service -- says READY=1 once it serves, WATCHDOG=1 at half of
``$WATCHDOG_USEC``, RELOADING=1 then READY=1 around a SIGHUP's reload, STOPPING=1 at
SIGTERM. (``systemd-run --user`` needs a user manager, which this machine has not: the
socket is the protocol's whole contract.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dtp.daemon._systemd import Notifier
from tests.daemon.tunnel_setup import Setup, service
from tests.support.daemon_procs import ENV, ROOT


class NotifySocket:
    """A Unix datagram socket standing in for the service manager's."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[dict[str, str]] = []

    def next(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """The next message holding ``key`` (those before it are kept, in order)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} in {timeout} s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(message)
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()


@contextmanager
def notify_socket(address: str) -> Iterator[NotifySocket]:
    sock = NotifySocket(address)
    try:
        yield sock
    finally:
        sock.close()


def _start(config: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dtp.cli", "daemon", "--config", str(config)],
        cwd=ROOT,
        env={**ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_watchdog_reload_and_stop_reach_the_manager(setup: Setup, abstract: bool) -> None:
    backend = setup.backend()
    config = setup.write_daemon(service([backend.info["port"]]))
    path = str(setup.tmp / "notify.sock")
    bound, named = (
        (f"\0dtp-test-{os.getpid()}", f"@dtp-test-{os.getpid()}")
        if abstract
        else (
            path,
            path,
        )
    )
    with notify_socket(bound) as manager:
        proc = _start(config, NOTIFY_SOCKET=named, WATCHDOG_USEC="400000")
        try:
            assert proc.stdout is not None
            ready_line = proc.stdout.readline()
            assert '"event": "ready"' in ready_line
            ready = manager.next("READY")
            assert ready["READY"] == "1"
            assert ready["STATUS"] == "serving 1 service, 0 forwards; 0 tunnels open"
            # the watchdog, every 0.2 s at most (half the manager's 0.4 s)
            first = manager.next("WATCHDOG")
            start = time.monotonic()
            for _ in range(3):
                assert manager.next("WATCHDOG") == first == {"WATCHDOG": "1"}
            assert time.monotonic() - start < 2.0
            proc.send_signal(signal.SIGHUP)
            reloading = manager.next("RELOADING")
            assert int(reloading["MONOTONIC_USEC"]) > 0
            assert manager.next("READY")["STATUS"].startswith("serving 1 service")
            proc.send_signal(signal.SIGTERM)
            assert manager.next("STOPPING")["STOPPING"] == "1"
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def test_a_watchdog_meant_for_another_process_is_not_pinged() -> None:
    """``$WATCHDOG_PID`` names the process the manager watches: a child of that
    process (started by it, the variables inherited) must not ping in its place."""
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000"}
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog == 0.5
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog is None
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog is None
    assert not Notifier({}).enabled
    assert not Notifier({}).send("READY=1")
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).address is None


def test_a_manager_gone_is_logged_once_and_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        assert not notifier.send("READY=1")
        assert not notifier.send("WATCHDOG=1")
        assert [r.getMessage() for r in caplog.records] == ["cannot notify the service manager"]
        with notify_socket(str(tmp_path / "gone.sock")) as manager:
            assert notifier.send("STATUS=back")
            assert manager.next("STATUS") == {"STATUS": "back"}
    finally:
        notifier.close()


def test_the_example_unit_file_is_a_notify_service_with_a_watchdog() -> None:
    """examples/dtp-daemon.service: what the daemon's notify support is for."""
    text = (ROOT / "examples" / "dtp-daemon.service").read_text()
    lines = {
        key.strip(): value.strip()
        for key, _, value in (
            line.partition("=") for line in text.splitlines() if "=" in line and line[0] != "#"
        )
    }
    assert lines["Type"] == "notify"
    assert lines["WatchdogSec"]
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "daemon --config" in lines["ExecStart"]
    assert lines["NoNewPrivileges"] == "yes"
    assert lines["ProtectSystem"] == "strict"
