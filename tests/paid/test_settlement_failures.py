"""A settlement that fails with something other than a ChainError must not take the
connection's release with it:

- settle_ended() let a ReceiptStoreError (the store closed or unreadable as the
  connection ended) escape; with the final receipt the client's CLOSE came with, that
  receipt is all the claim needs, and without one the receipt stays for the next
  start's recovery (logged, None);
- a paid server whose settlement raised (a bug, a ledger error that is not a
  ChainError) skipped the rest of the connection's end: the blocking server kept it
  among its open connections (and its client's place in the limits) for good, and
  the asyncio server never let its end of the carrier go.

Real LocalLedger files, real receipt stores, real connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import dtp.payments._serving
import dtp.socket
from dtp.ledger._objects import Sla
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._serving import settle_ended
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, ReceiptScope, fee
from tests.support.paid_twins import (
    PaidWorld,
    echo,
    echo_aio,
    hosted_ledgers,
    ident,
    loop_in_thread,
    stop,
)
from tests.support.polling import wait_for
from tests.support.settlements import is_settled

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER = ident(0x91)
CLIENT = ident(0x92)
PORT = 9
DEPOSIT = 100_000


def _receipt(scope: ReceiptScope, size: int, nonce: int) -> Receipt:
    return Receipt(scope, size, 1, fee(SLA, size, 1), nonce).sign(CLIENT)


@pytest.fixture
def world(tmp_path: Path) -> Any:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as (ledger, server_ledger, host):
        yield PaidWorld(ledger, server_ledger, host, tmp_path)


def _closed_writer(path: Path) -> ReceiptWriter:
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    assert writer.close(30)
    store.close()
    return writer


def test_a_closed_store_with_the_final_receipt_claims_it(
    world: PaidWorld, caplog: pytest.LogCaptureFixture
) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 10**9)
    cid = world.ledger.open_connection(CLIENT, world.host_id, PORT, cap, DEPOSIT).connection_id
    final = _receipt(world.ledger.receipt_scope(cid), 20480, 2)
    writer = _closed_writer(world.tmp_path / "r.db")
    with caplog.at_level(logging.WARNING):
        settlement = settle_ended(world.server_ledger, SERVER, cid, writer, final)
    assert settlement is not None and settlement.claimed == final.total_amount
    assert is_settled(world.ledger, cid)
    assert "claiming its final one" in caplog.text


def test_a_closed_store_without_a_final_receipt_leaves_it_for_recovery(
    world: PaidWorld, caplog: pytest.LogCaptureFixture
) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 10**9)
    cid = world.ledger.open_connection(CLIENT, world.host_id, PORT, cap, DEPOSIT).connection_id
    writer = _closed_writer(world.tmp_path / "r.db")
    with caplog.at_level(logging.WARNING):
        assert settle_ended(world.server_ledger, SERVER, cid, writer, None) is None
    assert "could not settle connection" in caplog.text
    assert not is_settled(world.ledger, cid)  # nothing refunded of what is owed


def _failing_settlements(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(dtp.payments._serving, "claim_and_settle", fail)


def test_the_blocking_server_releases_a_connection_whose_settlement_raised(
    world: PaidWorld, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _failing_settlements(monkeypatch)
    with dtp.socket.serve(
        world.host_id,
        PORT,
        echo,
        ledger=world.server_ledger,
        identity=SERVER,
        receipts=world.tmp_path / "r.db",
    ) as server:
        with caplog.at_level(logging.ERROR, logger="dtp.payments._serving"):
            for _ in range(2):
                with world.connect_as(CLIENT, PORT, DEPOSIT) as sock:
                    sock.sendall(b"ping")
                    assert sock.recv(4) == b"ping"
            assert wait_for(lambda: server.open_connections == 0, 10), server.open_connections
        assert caplog.text.count("settling connection") == 2, caplog.text


def test_the_asyncio_server_lets_the_carrier_go_when_its_settlement_raised(
    world: PaidWorld, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _failing_settlements(monkeypatch)
    with loop_in_thread() as loop:
        server = world.serve_aio(loop, PORT, echo_aio, SERVER, receipts=world.tmp_path / "r.db")
        try:
            with caplog.at_level(logging.ERROR, logger="dtp.payments._serving"):
                with world.connect_as(CLIENT, PORT, DEPOSIT) as sock:
                    sock.sendall(b"ping")
                    assert sock.recv(4) == b"ping"
                assert wait_for(lambda: "settling connection" in caplog.text, 10), caplog.text
                assert wait_for(lambda: server.open_connections == 0, 10)
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(60)


def test_of_the_stored_and_the_final_receipt_the_one_for_more_is_claimed(
    world: PaidWorld,
) -> None:
    """A final receipt with a higher nonce but a lower amount than the stored one (a
    ledger connection served again after a failed settlement: its gate was seeded from
    the escrow) took the stored one's place, and the client was refunded the rest."""
    from dtp.payments._settlement import claim_and_settle

    cap = world.ledger.create_spending_cap(CLIENT, 10**9)
    cid = world.ledger.open_connection(CLIENT, world.host_id, PORT, cap, DEPOSIT).connection_id
    scope = world.ledger.receipt_scope(cid)
    big, small = _receipt(scope, 40960, 10), _receipt(scope, 1024, 11)
    with ReceiptStore(world.tmp_path / "r.db") as store:
        assert store.keep(big)
        settlement = claim_and_settle(world.server_ledger, SERVER, cid, store, final=small)
    assert settlement is not None and settlement.claimed == big.total_amount
