"""A ledger connection whose DTP connection ended but whose settlement failed (the ledger
briefly unavailable) stays Open on the ledger, its receipts kept in the server's store for
a later claim. A client coming back on it is not served again: a new DTP connection's
gate is seeded from the escrow as the ledger reads it (nothing claimed), not from the
store, so it would grant a fresh allowance on top of the usage already receipted and
judge the client's next receipts against the wrong floor. Both paid servers refuse such
a connection ID ("already served") once the store holds a receipt of it, and when the
store cannot be read they refuse it too (its receipts unknown) rather than serve it on a
gate seeded from the escrow. The stored receipt is then claimed by the next start's
recovery, and all MIST is accounted for: deposit = claimed + refunded.

Real LocalLedger files, real receipt stores, real connections on 127.0.0.1; the outage is
a ledger wrapper raising LedgerUnavailable at the settlement calls, and the unreadable
store a real SQLite failure (its table renamed away under the server)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError
from dtp.hostid.paid import PaidServer, PaidSocket
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.ledger._objects import ConnectionState, Sla
from dtp.payments.receipts import Receipt, ReceiptScope, fee, object_id_bytes
from dtp.protocol.connection import ConnectionConfig
from tests.support.paid_twins import (
    OutageLedger,
    PaidWorld,
    hosted_ledgers,
    ident,
    loop_in_thread,
    stop,
)
from tests.support.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER = ident(0xB3)
CLIENT = ident(0xB4)
PORT = 33
DEPOSIT = 100_000
PAID_BYTES = 100 * 1024  # what the client's receipt covers: 1005 MIST with one request


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PaidWorld]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as (ledger, server_ledger, host):
        yield PaidWorld(ledger, server_ledger, host, tmp_path)


def _open(world: PaidWorld) -> str:
    cap = world.ledger.create_spending_cap(CLIENT, 10**9)
    return world.ledger.open_connection(CLIENT, world.host_id, PORT, cap, DEPOSIT).connection_id


def _raw(address: tuple[str, int], cid: str) -> dtp.socket.DTPSocket:
    """A DTP connection naming the ledger connection ``cid`` (no meter of its own: the
    test signs the receipts, and no ledger half-close at its end)."""
    config = ConnectionConfig(
        identity=CLIENT, is_client=True, connection_id=object_id_bytes(cid), port=PORT
    )
    return dtp.socket.create_connection(
        address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT, config=config
    )


def _receipt(scope: ReceiptScope, size: int, nonce: int) -> Receipt:
    return Receipt(scope, size, 1, fee(SLA, size, 1), nonce).sign(CLIENT)


def _first_session(
    address: tuple[str, int], scope: ReceiptScope, latest: Callable[[], object]
) -> Receipt:
    """Served, paid by a receipt the server keeps, then closed by the client."""
    cid = scope.connection_id
    paid = _receipt(scope, PAID_BYTES, 1)
    with _raw(address, cid) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        engine = sock._engine
        with engine.lock:
            engine.conn.send_receipt(paid.encode())
            engine.flush()
        assert wait_for(latest, 10), "the server did not keep the receipt"
    return paid


def _comes_back(address: tuple[str, int], cid: str) -> str:
    """The client back on ``cid``: what ended it (the server must not serve it). It
    sends nothing: data reaching a server that already aborted the connection has its
    kernel reset it, and the reset can overtake the reason the client reads. Served (a
    regression), the echo handler runs and the read times out instead."""
    with _raw(address, cid) as sock:
        sock.settimeout(3)
        with pytest.raises(DTPError) as ended:
            while sock.recv(65536):
                pass
    return str(ended.value)


def _counting_echo(entered: list[int]) -> Callable[[PaidSocket], None]:
    def echo(sock: PaidSocket) -> None:
        entered[0] += 1
        while data := sock.recv(65536):
            sock.sendall(data)

    return echo


def _counting_echo_aio(entered: list[int]) -> Callable[[PaidReader, PaidWriter], Any]:
    async def echo(reader: PaidReader, writer: PaidWriter) -> None:
        entered[0] += 1
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    return echo


@contextmanager
def _serving(
    api: str, world: PaidWorld, ledger: Any, handler_count: list[int], receipts: Path
) -> Iterator[Any]:
    """A paid echo server of the kind ``api`` on ``ledger``, closed and released at the
    end of the block."""
    if api == "blocking":
        server = PaidServer(
            world.host_id,
            PORT,
            _counting_echo(handler_count),
            ledger=ledger,
            identity=SERVER,
            receipts=receipts,
        )
        try:
            yield server
        finally:
            server.close()
            assert server.wait_released(30)
        return
    with loop_in_thread() as loop:
        started = dtp.aio.serve(
            world.host_id,
            PORT,
            _counting_echo_aio(handler_count),
            ledger=ledger,
            identity=SERVER,
            receipts=receipts,
        )
        aio: PaidAioServer = asyncio.run_coroutine_threadsafe(started, loop).result(30)
        try:
            yield aio
        finally:
            asyncio.run_coroutine_threadsafe(stop(aio), loop).result(60)
            # (released: its run's lock let go, so that a restart finds the run dead)
            assert asyncio.run_coroutine_threadsafe(aio.wait_released(30), loop).result(60)


def _recovered_at_restart(world: PaidWorld, receipts: Path, cid: str, paid: Receipt) -> None:
    """The next start claims the kept receipt; every MIST is where it should be."""
    balance = world.ledger.balance(CLIENT.sui_address)
    with PaidServer(
        world.host_id,
        PORT,
        _counting_echo([0]),
        ledger=world.server_ledger,
        identity=SERVER,
        receipts=receipts,
    ) as restarted:
        recovered = dict(restarted.recovered)
    assert cid in recovered, restarted.recovered
    settlement = recovered[cid]
    assert settlement.claimed == paid.total_amount  # the receipt of the first session
    assert settlement.claimed + settlement.refunded == DEPOSIT
    assert world.ledger.balance(CLIENT.sui_address) == balance + settlement.refunded
    tc = world.ledger.get_connection(cid)
    assert tc.settled
    assert world.ledger.get_escrow(tc.escrow).claimed == paid.total_amount
    audit = world.ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_connection_whose_settlement_failed_is_not_served_again(
    api: str, world: PaidWorld, caplog: pytest.LogCaptureFixture
) -> None:
    cid = _open(world)
    receipts = world.tmp_path / "receipts.db"
    outage = OutageLedger(world.server_ledger)
    entered = [0]
    with (
        caplog.at_level(logging.WARNING),
        _serving(api, world, outage, entered, receipts) as server,
    ):
        writer = server.receipt_writer
        outage.down.set()  # the ledger goes away as the first session ends
        scope = world.ledger.receipt_scope(cid)
        paid = _first_session(server.address, scope, lambda: writer.latest(cid) is not None)
        assert wait_for(lambda: outage.refused > 0 and not len(server._serving), 10)
        assert entered[0] == 1
        # still Open on the ledger, nothing claimed; the store has the receipt
        tc = world.ledger.get_connection(cid)
        assert tc.state == ConnectionState.OPEN
        assert world.ledger.get_escrow(tc.escrow).claimed == 0
        stored = writer.latest(cid)
        assert stored is not None and stored.receipt.total_amount == paid.total_amount
        outage.down.clear()  # (the ledger is back: it would admit the connection)

        reason = _comes_back(server.address, cid)
        assert "already served" in reason
        assert entered[0] == 1  # its handler never ran: nothing served on credit
        # nothing took the kept receipt's place: it is the one to claim
        stored = writer.latest(cid)
        assert stored is not None and stored.receipt == paid
    assert "could not settle connection" in caplog.text
    _recovered_at_restart(world, receipts, cid, paid)


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_an_unreadable_store_refuses_a_connection_back_rather_than_seed_from_the_escrow(
    api: str, world: PaidWorld, caplog: pytest.LogCaptureFixture
) -> None:
    cid = _open(world)
    receipts = world.tmp_path / "receipts.db"
    outage = OutageLedger(world.server_ledger)
    entered = [0]
    with (
        caplog.at_level(logging.WARNING),
        _serving(api, world, outage, entered, receipts) as server,
    ):
        writer = server.receipt_writer
        outage.down.set()
        scope = world.ledger.receipt_scope(cid)
        paid = _first_session(server.address, scope, lambda: writer.latest(cid) is not None)
        assert wait_for(lambda: outage.refused > 0 and not len(server._serving), 10)
        assert writer.flush(cid, 10)
        outage.down.clear()
        # the store cannot be read now: its table is gone from under the server
        raw = sqlite3.connect(receipts, isolation_level=None)
        try:
            raw.execute("ALTER TABLE receipts RENAME TO receipts_away")
            caplog.clear()
            reason = _comes_back(server.address, cid)
        finally:
            raw.execute("ALTER TABLE receipts_away RENAME TO receipts")
            raw.close()
        assert "receipts" in reason, reason
        assert entered[0] == 1  # not served on a gate seeded from the escrow
        assert "cannot read the receipts of connection" in caplog.text
    _recovered_at_restart(world, receipts, cid, paid)
