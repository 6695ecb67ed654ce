"""The services daemon (dtp/daemon/_services.py and _runner.py):

* One DTP connection per ledger connection: a second is refused, as dtp.aio refuses it
  (which it does for a LedgerAdmission hook only; the daemon's hook is its own), so the
  first's end never settles a ledger connection others are still served on, unpaid.
* A connection between its admission and its registration (reading its terms on the
  ledger) when the drain starts is closed too: not served through the stop, its
  receipt store not closed under it, the ledger connection settled.
* Two SIGHUPs close together run one reload after the other, never side by side (the
  slower would fail on what the faster just published and publish the old settings
  again: services served that are not on the ledger).
* A reload that changes a service's own ``allow``/``deny`` closes the open connections
  of the clients it no longer permits.
* A connection whose terms cannot be read, or whose service a reload removes while it
  is being admitted, is cut and settled: its deposit does not wait in escrow for the
  client's own timeout.

Real LocalLedger files, real DTP connections on 127.0.0.1 to an in-process daemon; the
fakes are ledger calls slowed (or once failing) by thin wrappers, to hold a race open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
from dtp.daemon._config import load_config
from dtp.daemon._fees import ServerFees
from dtp.daemon._runner import Daemon
from dtp.errors import ChainError, ConnectionRefused, DTPError
from dtp.hostid._admission import Admitted
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import ConnectionTerms
from tests.daemon.inproc import (
    SUI,
    LedgerConnector,
    echo_backend,
    run_scenario,
    service,
    tunnel,
    until,
    write_config,
)

BOUND = 10.0  # seconds: generous for a loaded machine; each step takes well under 1 s


class _Client(LedgerConnector):
    """A client of the daemon: its own LocalLedger on the daemon's file."""

    def __init__(self, tmp: Path, daemon: Daemon) -> None:
        self.identity = HostIdentity.generate()
        self.ledger = LocalLedger(tmp / "ledger.sqlite")
        self.ledger.faucet(self.identity.sui_address, SUI)
        self.cap = self.ledger.create_spending_cap(self.identity, SUI)
        assert daemon.host_id is not None and daemon.endpoint is not None
        self.host_id = daemon.host_id
        self.endpoint = daemon.endpoint
        self.server_key = daemon.identity.noise_public

    async def open_ledger(self, port: int) -> str:
        opened = await asyncio.to_thread(
            self.ledger.open_connection, self.identity, self.host_id, port, self.cap, 1000
        )
        return opened.connection_id

    def state(self, cid: str) -> ConnectionState:
        return self.ledger.get_connection(cid).state


# one client of its own per scenario, on the daemon's LocalLedger file
_run = functools.partial(run_scenario, client=_Client)


async def _closed(writer: dtp.aio.DTPStreamWriter) -> str | None:
    """Why the daemon closed the connection (a new tunnel cannot be opened), or None
    while it serves it."""
    try:
        await asyncio.wait_for(tunnel(writer), BOUND)
    except (DTPError, asyncio.IncompleteReadError, ConnectionError) as exc:
        return str(exc)
    return None


# -- one DTP connection per ledger connection ---------------------------------------------


def test_a_second_dtp_connection_on_one_ledger_connection_is_refused(tmp_path: Path) -> None:
    """The second is refused: one ledger connection carries one DTP connection, so the
    first's end settles a ledger connection nothing else carries tunnels on."""

    async def scenario(daemon: Daemon, client: _Client, config: Path, port: int) -> None:
        cid = await client.open_ledger(7000)
        _, first = await client.connect(cid, 7000)
        assert await tunnel(first) == b"ping"
        with pytest.raises(ConnectionRefused, match="already served: one DTP connection per"):
            _, second = await client.connect(cid, 7000)
            second.close()  # (in case it was admitted after all)
        assert await tunnel(first, b"still") == b"still"  # the first one goes on
        first.close()
        # its end settles the ledger connection, and gives the ID back: a new DTP
        # connection on it is refused by the ledger now, not as "already served"
        await until(lambda: client.state(cid) == ConnectionState.CLOSED, "settled")
        with pytest.raises(ConnectionRefused, match="not Open"):
            _, again = await client.connect(cid, 7000)
            again.close()

    _run(tmp_path, lambda port: service(7000, port), scenario)


# -- a drain while a connection reads its terms --------------------------------------------


def test_a_drain_closes_a_connection_admitted_as_it_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain's close loop also closes the connection still reading its terms: it is
    not served through the stop, the drain does not wait SETTLE_TIMEOUT (30 s) for its
    handler, and the ledger connection is settled."""
    reading = asyncio.Event()
    go_on = asyncio.Event()
    real_terms = ServerFees.terms

    async def slow_terms(
        self: ServerFees,
        connection_id: str,
        admitted: Admitted | None = None,
        *,
        served: bool = False,
    ) -> ConnectionTerms:
        reading.set()
        # held until the drain is under way (a ledger read, where the admission kept no
        # view; the firewall's first read: the handler's awaits before it registers)
        await go_on.wait()
        return await real_terms(self, connection_id, admitted, served=served)

    monkeypatch.setattr(ServerFees, "terms", slow_terms)

    async def scenario(daemon: Daemon, client: _Client, config: Path, port: int) -> None:
        assert daemon.services is not None
        cid = await client.open_ledger(7000)
        _, writer = await client.connect(cid, 7000)
        await asyncio.wait_for(reading.wait(), BOUND)
        started = time.monotonic()
        drain = asyncio.ensure_future(daemon.services.drain(1.0))
        await asyncio.sleep(0.3)  # the drain is past its close loop, waiting on handlers
        go_on.set()
        assert await _closed(writer)
        await asyncio.wait_for(drain, BOUND)  # not SETTLE_TIMEOUT
        assert time.monotonic() - started < BOUND
        assert client.state(cid) == ConnectionState.CLOSED  # settled, refunded

    _run(tmp_path, lambda port: service(7000, port), scenario)


# -- reloads ------------------------------------------------------------------------------


def test_two_sighups_close_together_leave_the_ledger_as_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Three SIGHUPs within a moment, the reload adding two services (slowed: each
    add_service takes 0.3 s). One reload runs, then one more for the SIGHUPs that came
    meanwhile: reloads never sync the ledger side by side, where the slower ones would
    fail on the services the first added and take them off the ledger while the daemon
    serves them."""
    real_add = LocalLedger.add_service

    def slow_add(self: LocalLedger, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.3)
        real_add(self, *args, **kwargs)

    async def main() -> None:
        async with echo_backend() as port:
            config = write_config(tmp_path, service(7000, port))
            daemon = Daemon(load_config(config))
            running = asyncio.ensure_future(daemon.run())
            try:
                # serving, not only started: SIGHUPs before that are one reload, once
                # ready (_runner.py), and the two this test counts would be one
                await until(lambda: daemon.phase == "serving" or running.done(), "ready")
                assert daemon.host_id is not None and daemon.services is not None
                config.write_text(config.read_text() + service(7001, port) + service(7002, port))
                monkeypatch.setattr(LocalLedger, "add_service", slow_add)
                for _ in range(3):
                    os.kill(os.getpid(), signal.SIGHUP)
                    await asyncio.sleep(0.002)
                await until(
                    lambda: caplog.text.count("reloaded") >= 2 or "refused" in caplog.text,
                    "the reloads",
                )
                await asyncio.sleep(0.5)  # (no third one comes)
                on_ledger = set(daemon.ledger.get_host(daemon.host_id).services)
                assert on_ledger == set(daemon.services.services) == {7000, 7001, 7002}
                assert "refused" not in caplog.text
                assert caplog.text.count("reloaded") == 2  # the first, and one more
            finally:
                daemon.request_stop()
                await asyncio.wait_for(running, 4 * BOUND)

    with caplog.at_level(logging.INFO, logger="dtp.daemon"):
        asyncio.run(asyncio.wait_for(main(), 8 * BOUND))


def test_a_reload_denying_a_client_closes_its_open_connections(tmp_path: Path) -> None:
    """The service's own lists hold after admission too: the reload that denies the
    client closes its open connections, and it opens no more tunnels."""

    async def scenario(daemon: Daemon, client: _Client, config: Path, port: int) -> None:
        cid = await client.open_ledger(7000)
        _, writer = await client.connect(cid, 7000)
        assert await tunnel(writer) == b"ping"
        denied = f'deny = ["{client.identity.sui_address}"]'
        config.write_text(config.read_text().replace("health_interval = 30", denied, 1))
        await daemon.reload()
        why = await _closed(writer)
        assert why is not None and "the firewall of service svc7000 now denies" in why
        # closed as the host's firewall closes it: settled, the deposit refunded
        await until(lambda: client.state(cid) == ConnectionState.CLOSED, "settled")
        assert daemon.book.service("svc7000").denials == 1

    _run(tmp_path, lambda port: service(7000, port), scenario)


# -- connections cut before they were served -----------------------------------------------


def test_a_connection_whose_terms_cannot_be_read_is_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut, and settled: never left Open on the ledger with the deposit locked."""
    failed: list[str] = []
    real_terms = ServerFees.terms

    async def flaky_terms(
        self: ServerFees,
        connection_id: str,
        admitted: Admitted | None = None,
        *,
        served: bool = False,
    ) -> ConnectionTerms:
        if not failed:
            failed.append(connection_id)
            raise ChainError("ledger RPC timed out")
        return await real_terms(self, connection_id, admitted, served=served)

    monkeypatch.setattr(ServerFees, "terms", flaky_terms)

    async def scenario(daemon: Daemon, client: _Client, config: Path, port: int) -> None:
        cid = await client.open_ledger(7000)
        with contextlib.suppress(DTPError):
            _, writer = await client.connect(cid, 7000)
            assert await _closed(writer)
        assert failed == [cid]
        await until(lambda: client.state(cid) == ConnectionState.CLOSED, "settled")

    _run(tmp_path, lambda port: service(7000, port), scenario)


def test_a_connection_whose_service_was_removed_while_admitted_is_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload removes the service while the ledger admits a connection to it (held
    here until the reload is done): cut, and settled."""
    admitting = threading.Event()
    go_on = threading.Event()
    held: list[str] = []
    real_view = LocalLedger.connection_view

    def held_view(self: LocalLedger, connection_id: str, *args: Any, **kwargs: Any) -> Any:
        if connection_id in held:
            admitting.set()
            go_on.wait(BOUND)
        return real_view(self, connection_id, *args, **kwargs)

    monkeypatch.setattr(LocalLedger, "connection_view", held_view)

    async def scenario(daemon: Daemon, client: _Client, config: Path, port: int) -> None:
        assert daemon.services is not None
        cid = await client.open_ledger(7001)
        held.append(cid)
        connecting = asyncio.ensure_future(client.connect(cid, 7001))
        assert await asyncio.to_thread(admitting.wait, BOUND)
        config.write_text(write_config(tmp_path, service(7000, port)).read_text())
        await daemon.reload()
        assert 7001 not in daemon.services.services
        go_on.set()
        with contextlib.suppress(DTPError):
            _, writer = await asyncio.wait_for(connecting, BOUND)
            assert await _closed(writer)
        await until(lambda: client.state(cid) == ConnectionState.CLOSED, "settled")

    _run(tmp_path, lambda port: service(7000, port) + service(7001, port), scenario)
