"""The paid servers' policy loop and the asyncio server's start.

1. The policy loop (PaidServer's thread, PaidAioServer's task) re-reads the Host every
   refresh interval and applies its firewall and limits to open connections. It
   survived only a ChainError: any other exception from a refresh ended it -- and with
   it the deny list's reach over open connections -- for the life of the server,
   silently (the thread died; nobody retrieved the task's exception). It now logs the
   error and refreshes again at the next interval.
2. A refresh that cannot read the ledger (the Host, or the state of open connections)
   is logged on the server's own logger (``dtp.hostid.paid._blocking_server``,
   ``.asyncio_server``), where an operator filtering on it finds it, whichever module
   made the read.
3. PaidAioServer's start attached to its receipt store on the event loop: behind
   another process holding the store's lock file, the loop stood still for up to
   BUSY_TIMEOUT. The attach runs in a thread now.

Real LocalLedger file, real DTP connections on 127.0.0.1, a real process holding the
lock file. The one fault injected is at the ledger edge (a Host read that raises an
unexpected error once), which no real ledger here can be made to do.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.payments.receipt_store._store
import dtp.socket
from dtp.errors import ConnectionClosed, LedgerUnavailable
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._objects import Host, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import CLOSE_FIREWALL_DENIED
from tests.support.paid_twins import (
    echo_aio,
    echo_server,
    funded_ledger,
    ident,
    loop_in_thread,
    stop,
)
from tests.support.polling import wait_for
from tests.support.receipt_stores import held_by_another_process
from tests.support.settlements import is_settled

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER, CLIENT = ident(0x91), ident(0x92)
PORT = 7
POLICY = ServicePolicy(refresh_interval=0.2)


class HostReadFault:
    """The ledger a server is given: ``ledger`` itself, except that once :meth:`arm` is
    called its next ``get_host`` raises an unexpected error (not a ChainError), as a
    bug or a damaged object would."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._armed = False
        self.raised = threading.Event()
        """Set when the armed read has raised."""
        self.read = threading.Event()
        """Set when a read has returned a Host."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def arm(self) -> None:
        with self._lock:
            self._armed = True

    def get_host(self, host_id: str) -> Host:
        with self._lock:
            armed, self._armed = self._armed, False
        if armed:
            self.raised.set()
            raise RuntimeError("the Host read came back damaged")
        host = self._ledger.get_host(host_id)
        self.read.set()
        return host


class ReadOutage:
    """The ledger a server is given: ``ledger`` itself, except that the reads named in
    :attr:`down` (``get_host``, ``connection_state``) fail with LedgerUnavailable, as
    with a node that cannot be reached."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.down: frozenset[str] = frozenset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def _read(self, name: str) -> Any:
        if name in self.down:
            raise LedgerUnavailable(f"ledger unavailable ({name})")
        return getattr(self._ledger, name)

    def get_host(self, host_id: str) -> Host:
        host: Host = self._read("get_host")(host_id)
        return host

    def connection_state(self, connection_id: str) -> Any:
        return self._read("connection_state")(connection_id)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def paid_host(ledger: LocalLedger) -> str:
    """A Host with the echo service on PORT."""
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    return host_id


def paid_server(api: str, ledger: HostReadFault, host_id: str) -> Any:
    """A paid echo server (``api``: blocking or asyncio) on ``ledger``, refreshing the
    Host every 0.2 s."""
    return echo_server(api, ledger, host_id, port=PORT, identity=SERVER, policy=POLICY)


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_an_unexpected_error_in_a_refresh_does_not_end_the_policy_loop(
    ledger: LocalLedger, api: str, caplog: pytest.LogCaptureFixture
) -> None:
    host_id = paid_host(ledger)
    faulty = HostReadFault(ledger)
    with (
        caplog.at_level(logging.ERROR, logger="dtp"),
        paid_server(api, faulty, host_id) as server,
    ):
        sock = dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}", timeout=30, ledger=ledger, identity=CLIENT, deposit=100_000
        )
        try:
            cid = sock.connection_id
            assert cid is not None
            sock.sendall(b"hi")
            assert sock.recv(16) == b"hi"
            # a refresh fails with an unexpected error...
            faulty.arm()
            assert faulty.raised.wait(30)
            # ...and the next one still applies the deny list to the open connection
            # (before: the loop had ended, and the recv timed out after 30 s)
            ledger.deny(SERVER, host_id, CLIENT.sui_address)
            with pytest.raises(ConnectionClosed) as closed:
                while sock.recv(65536):
                    pass
            assert closed.value.code == CLOSE_FIREWALL_DENIED
        finally:
            sock.close()
        assert wait_for(lambda: is_settled(ledger, cid), timeout=30)
        assert wait_for(lambda: server.open_connections == 0, timeout=30)
    failures = [
        r for r in caplog.records if r.exc_info is not None and r.exc_info[0] is RuntimeError
    ]
    assert len(failures) == 1, "the failed refresh was logged once, with its traceback"
    assert host_id in failures[0].getMessage()
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_ledger_read_a_refresh_cannot_make_is_logged_on_the_servers_logger(
    ledger: LocalLedger, api: str, caplog: pytest.LogCaptureFixture
) -> None:
    host_id = paid_host(ledger)
    outage = ReadOutage(ledger)
    name = f"dtp.hostid.paid._{api}_server"
    policy = ServicePolicy(refresh_interval=0.1, ledger_check_interval=0.1)
    reads = [
        ("connection_state", "cannot read the state of open connections"),
        ("get_host", f"cannot read host {host_id}"),
    ]

    def logged(line: str) -> bool:
        return any(line in r.getMessage() for r in caplog.records)

    with (
        caplog.at_level(logging.WARNING, logger="dtp"),
        echo_server(api, outage, host_id, port=PORT, identity=SERVER, policy=policy) as server,
    ):
        sock = dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}", timeout=30, ledger=ledger, identity=CLIENT, deposit=100_000
        )
        try:
            sock.sendall(b"hi")
            assert sock.recv(16) == b"hi"
            # the state of the open connection, due for a check at each refresh,
            # cannot be read; then the Host cannot be read
            for read, line in reads:
                outage.down = frozenset([read])
                assert wait_for(lambda line=line: logged(line), timeout=30), line
            outage.down = frozenset()
        finally:
            sock.close()
        assert wait_for(lambda: server.open_connections == 0, timeout=30)
    for _, line in reads:
        lines = [r for r in caplog.records if line in r.getMessage()]
        assert {(r.name, r.levelno) for r in lines} == {(name, logging.WARNING)}, line


def test_the_event_loop_runs_on_while_the_asyncio_server_waits_for_the_lock_file(
    ledger: LocalLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the other process holds the lock file for as long as the test wants: the start
    # would wait 600 s for it (before: with the event loop standing still all along)
    monkeypatch.setattr(dtp.payments.receipt_store._store, "BUSY_TIMEOUT", 600.0)
    host_id = paid_host(ledger)
    reads = HostReadFault(ledger)  # (never armed: it tells when the start read the Host)
    path = (tmp_path / "receipts.db").resolve()
    lock = f"{path}-lock"
    take = f"fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
    ticks = 0
    done = threading.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    with loop_in_thread() as loop:
        ticker = asyncio.run_coroutine_threadsafe(tick(), loop)
        try:
            with held_by_another_process(take):
                starting = asyncio.run_coroutine_threadsafe(
                    dtp.aio.serve(
                        host_id,
                        PORT,
                        echo_aio,
                        ledger=reads,  # type: ignore[arg-type]
                        identity=SERVER,
                        receipts=path,
                        policy=POLICY,
                    ),
                    loop,
                )
                # the start read the Host; attaching to the store is next, and waits
                assert reads.read.wait(30)
                before = ticks
                ticked = wait_for(lambda: ticks >= before + 20, timeout=30)
                waited = not starting.done()
            # the lock file is let go: the server starts
            server = starting.result(60)
            try:
                assert ticked, "the event loop stood still while the start waited"
                assert waited, "the start did not wait for the lock file"
                with dtp.socket.create_connection(
                    f"dtp://{host_id}:{PORT}",
                    timeout=30,
                    ledger=ledger,
                    identity=CLIENT,
                    deposit=100_000,
                ) as sock:
                    sock.sendall(b"hi")
                    assert sock.recv(16) == b"hi"
            finally:
                asyncio.run_coroutine_threadsafe(stop(server), loop).result(60)
        finally:
            done.set()
            ticker.result(30)
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
