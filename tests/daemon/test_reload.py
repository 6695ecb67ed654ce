"""A service removed by a reload (SIGHUP) while a client still has a connection to it:
the open tunnel goes on, the service leaves the ledger once that connection closed, and
a client that opened a ledger connection to it meanwhile gets its deposit back."""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path
from typing import Any

from dtp.daemon._state import read_status
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.daemon.tcp_backends import echo_server
from tests.support.daemon_procs import SUI, Proc, daemon, forward_address, wait_until

DEPOSIT = 1_000_000


SERVICE = """
[[service]]
name = "{name}"
port = {port}
backends = ["127.0.0.1:{backend}"]
health_interval = 30
price_per_kib = 10
price_per_request = 5
min_deposit = {deposit}
"""


def forwarder(tmp: Path, name: str, host_id: str) -> Path:
    HostIdentity.generate().save(tmp / f"{name}.key")
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "{name}.key"
state_dir = "{name}-state"
faucet = {10 * SUI}

[[forward]]
name = "svc"
listen = "127.0.0.1:0"
target = "dtp://{host_id}:7000"
deposit = {DEPOSIT}
"""
    )
    return path


def test_removed_service_leaves_the_ledger_at_once_and_its_open_tunnels_go_on(
    tmp_path: Path,
) -> None:
    HostIdentity.generate().save(tmp_path / "provider.key")
    listener, serving = echo_server()
    backend = listener.getsockname()[1]
    head = f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "daemon-state"
faucet = {SUI}
drain_timeout = 2
"""
    kept = SERVICE.format(name="kept", port=7001, backend=backend, deposit=DEPOSIT)
    removed = SERVICE.format(name="gone", port=7000, backend=backend, deposit=DEPOSIT)
    config = tmp_path / "daemon.toml"
    config.write_text(head + removed + kept)
    procs: list[Proc] = []
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        d = daemon(config)
        procs.append(d)
        host_id = d.info["host_id"]
        early = daemon(forwarder(tmp_path, "early", host_id))
        procs.append(early)
        with socket.create_connection(forward_address(early), timeout=10) as client:
            client.sendall(b"before")
            assert client.recv(100) == b"before"
            config.write_text(head + kept)
            d.send(signal.SIGHUP)
            # the ledger counts no connections (docs/escrow.md §2): a service with one
            # open still leaves the Host at the reload, so no one opens a new one to it
            wait_until(
                lambda: 7000 not in ledger.get_host(host_id).services,
                timeout=10,
                what="the removed service off the ledger",
            )
            assert "service kept on the ledger" not in d.log()
            client.sendall(b"after")  # the open tunnel goes on, on its own SLA copy
            assert client.recv(100) == b"after"

            # a client asking for the removed service now is refused by the ledger's
            # open: nothing of its goes into escrow
            late = daemon(forwarder(tmp_path, "late", host_id))
            procs.append(late)
            with socket.create_connection(forward_address(late), timeout=10) as refused:
                refused.sendall(b"x")
                with contextlib.suppress(ConnectionResetError):  # it had sent data
                    assert refused.recv(100) == b""
            assert ledger.balance(late.info["address"]) == 10 * SUI
            assert ledger.audit()["escrows"] == DEPOSIT  # the early client's, still open
        early.stop()
        assert d.stop() == 0
        audit = ledger.audit()
        assert audit["escrows"] == 0
        # the removed service's row: counters kept, nothing held or healthy once its
        # last connection was claimed and settled
        row = read_status(tmp_path / "daemon-state")["services"]["gone"]  # type: ignore[index]
        assert row["fees_claimed"] > 0
        assert (row["receipts_held"], row["healthy_backends"]) == (0, 0)
    finally:
        for proc in reversed(procs):
            proc.kill()
        ledger.close()
        listener.close()
        serving.join(5)


def test_status_shows_the_new_target_after_a_reload(tmp_path: Path) -> None:
    """A reload points a paid forward at another service while a tunnel to the old one
    is open: once that tunnel's last receipt went out, `dtp status` still showed the
    old target (the retired forwarder wrote its own target back on every receipt)."""
    HostIdentity.generate().save(tmp_path / "provider.key")
    listener, serving = echo_server()
    backend = listener.getsockname()[1]
    config = tmp_path / "daemon.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "daemon-state"
faucet = {SUI}
"""
        + SERVICE.format(name="a", port=7000, backend=backend, deposit=DEPOSIT)
        + SERVICE.format(name="b", port=7001, backend=backend, deposit=DEPOSIT)
    )
    procs: list[Proc] = []
    try:
        d = daemon(config)
        procs.append(d)
        forward = forwarder(tmp_path, "client", d.info["host_id"])
        f = daemon(forward)
        procs.append(f)
        status = tmp_path / "client-state"

        def row() -> dict[str, Any]:
            return dict((read_status(status) or {}).get("forwards", {}).get("svc", {}))

        with socket.create_connection(forward_address(f), timeout=10) as client:
            client.sendall(b"old")
            assert client.recv(100) == b"old"
            forward.write_text(forward.read_text().replace(":7000", ":7001"))
            f.send(signal.SIGHUP)
            wait_until(lambda: "reloaded" in f.log(), what="the reload")
            client.sendall(b"more")
            assert client.recv(100) == b"more"
            wait_until(lambda: row().get("active_tunnels") == 1, what="the tunnel in the status")
        # its end sends the old connection's last receipt
        wait_until(lambda: row().get("active_tunnels") == 0, what="the tunnel's end")
        assert row()["target"] == f"dtp://{d.info['host_id']}:7001"
    finally:
        for proc in reversed(procs):
            proc.kill()
        listener.close()
        serving.join(5)
