"""A forwarder whose provider died settles the connection the provider left, after its
half-close timeout -- also across a restart of the forwarder, from its state directory
alone, with no command typed (docs/daemon.md, "Tunnels").

Two ``dtp daemon`` processes on one LocalLedger file: the provider is killed (SIGKILL:
it never settles) while the forwarder's connection is open; the forwarder half-closes
it and is stopped before the ten minutes are over. The test moves the ledger file's
clock past them (LocalLedger's clock, shared by every process on the file: the ten
minutes pass in no time) and starts the forwarder again: its first look at the book of
connections (``connections.sqlite``) settles it, the whole deposit back.

No ``dtp refund`` by hand is needed (tests/daemon/test_refunds.py: the running
forwarder does the same)."""

from __future__ import annotations

import socket
from pathlib import Path

from dtp.daemon._refunds import OpenedBook
from dtp.daemon._state import CONNECTIONS_FILE
from dtp.ledger._connections import find_connections
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState
from dtp.ledger.local import LocalLedger
from tests.daemon.daemon_configs import write_provider
from tests.daemon.metrics_scrape import METRICS, scrape, value
from tests.daemon.tcp_backends import Backend, serves_health_checks
from tests.support.daemon_procs import (
    SUI,
    daemon,
    forward_address,
    running,
    wait_until,
    write_forwarder,
)
from tests.support.settlements import is_settled, settled_escrow

DEPOSIT = 1_000_000


def echo(sock: socket.socket) -> None:
    if serves_health_checks(sock):
        return
    sock.settimeout(10)
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def test_a_restarted_forwarder_settles_the_connection_its_dead_provider_left(
    tmp_path: Path,
) -> None:
    backend = Backend(echo)
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        provider = daemon(write_provider(tmp_path, backend.port, "drain_timeout = 2"))
        with running(provider):
            config = write_forwarder(
                tmp_path,
                provider.info["host_id"],
                7000,
                f"deposit = {DEPOSIT}\n",
                ledger=f'ledger = "ledger.sqlite"\nfaucet = {10 * SUI}\nrefund_interval = 0.2'
                f"\ndrain_timeout = 2\n{METRICS}",
            )
            forwarder = daemon(config)
            client = forwarder.info["address"]
            with running(forwarder):
                with socket.create_connection(forward_address(forwarder), timeout=10) as s:
                    s.sendall(b"ping")
                    assert s.recv(4) == b"ping"
                (report,) = find_connections(ledger, client=client).reports
                cid = report.connection.id
                provider.kill()  # the outage: it never settles
                # the forwarder's link ends with the provider's carrier: half-closed
                wait_until(
                    lambda: ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED,
                    timeout=30,
                    what="the forwarder's half-close",
                )
                # (its metrics: one connection waiting in the book, none settled yet)
                samples = scrape(str(forwarder.info["metrics"]))
                assert value(samples, "dtp_refunds_waiting") == 1
                assert value(samples, "dtp_refunds_settled_total") == 0
                assert forwarder.stop() == 0  # before the ten minutes are over
            assert not is_settled(ledger, cid)
            book = OpenedBook(tmp_path / "forwarder-state" / CONNECTIONS_FILE)
            try:
                assert [e.connection_id for e in book.entries()] == [cid]
            finally:
                book.close()

            ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)  # the outage's ten minutes
            again = daemon(config)  # no command: the start does it
            with running(again):
                wait_until(
                    lambda: is_settled(ledger, cid),
                    timeout=30,
                    what="the settlement after the restart",
                )
                metrics = str(again.info["metrics"])
                wait_until(
                    lambda: value(scrape(metrics), "dtp_refunds_settled_total") == 1,
                    timeout=30,
                    what="the settlement counted in the metrics",
                )
                samples = scrape(metrics)
                assert value(samples, "dtp_refunded_mist_total") == DEPOSIT
                assert value(samples, "dtp_refunds_waiting") == 0
                assert value(samples, "dtp_refunds_skipped_total") == 0
                assert again.stop() == 0
        escrow = settled_escrow(ledger, cid)
        assert (escrow.claimed, escrow.refunded, escrow.balance) == (0, DEPOSIT, 0)
        # (the faucet of each start tops the balance up: the escrow's refund says it)
        assert "deposit refunded" in again.log()
        book = OpenedBook(tmp_path / "forwarder-state" / CONNECTIONS_FILE)
        try:
            assert book.entries() == []
        finally:
            book.close()
    finally:
        ledger.close()
        backend.close()
