"""A blocking SDK client killed with its paid connection open, its server killed too:
nothing of either settles or half-closes it. The client recorded the connection in its
book of refunds before the deposit moved (``dtp.socket.create_connection``'s
``on_open``, the process collector's ``record_open`` with a file: docs/escrow.md
§7.1), so the next run on that file finds it, half-closes it and, once the half-close
timeout has passed, takes the whole deposit back -- with no command typed.

Without the book the deposit stayed in escrow until ``dtp refund`` by hand: no running
process knew of the connection.

Three processes on one LocalLedger file (the server, the client, and this test as the
next run); the ten minutes pass by moving the file's clock."""

from __future__ import annotations

from pathlib import Path

import pytest

import dtp.payments._refunds as refunds
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import fee
from dtp.payments._refund_book import OpenedBook
from dtp.payments._refunds import RefundCollector
from tests.support.paid_inprocess import ident
from tests.support.polling import wait_for
from tests.support.procs import announcing, stop
from tests.support.settlements import settlement

MODULE = "tests.support.refund_procs"
SERVER_SEED, CLIENT_SEED = 0x61, 0x62
SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1_000)
DEPOSIT = 5_000_000
PORT = 443


def test_a_killed_clients_deposit_comes_back_through_its_book(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(refunds, "POLL", 0.2)  # (the clock moves by hand: seen soon)
    server, client = ident(SERVER_SEED), ident(CLIENT_SEED)
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        host = ledger.create_host(server, server.noise_public)
        ledger.add_service(server, host, PORT, "paid", SLA)
        ledger.faucet(client.sui_address, 1 << 40)
        book = tmp_path / "refunds.sqlite"
        led = str(tmp_path / "ledger.db")
        serving = (led, f"{SERVER_SEED:x}", host, str(PORT), str(tmp_path / "receipts.db"))
        paying = (led, f"{CLIENT_SEED:x}", f"dtp://{host}:{PORT}", str(book), str(DEPOSIT))
        with (
            announcing(MODULE, "server", *serving) as (server_proc, _),
            announcing(MODULE, "client", *paying) as (client_proc, opened),
        ):
            cid = opened["connection_id"]
            # the server frozen first, so that it never sees the client go (it would
            # settle), then both killed: neither settles nor half-closes anything now
            stop(server_proc)
            client_proc.kill()
            client_proc.wait(10)
            server_proc.kill()
            server_proc.wait(10)
        assert ledger.get_connection(cid).state == ConnectionState.OPEN
        with OpenedBook(book) as left:
            # (its spending cap was written before the open moved the deposit)
            assert [(e.cap_id, e.connection_id) for e in left.entries()] == [
                (opened["cap_id"], cid)
            ]

        with RefundCollector(ledger, client, book) as next_run:
            next_run.start()  # no command: what the book holds is taken up
            assert wait_for(
                lambda: ledger.get_connection(cid).state == ConnectionState.HALF_CLOSED, 10
            )
            ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS + 1_000)
            assert wait_for(lambda: next_run.refunded, 40)
        escrow = settlement(ledger, cid)
        assert escrow is not None and escrow.deleted  # (its client deleted it as it settled)
        assert next_run.refunded == [(cid, escrow.refunded)]
        # everything the server did not claim (it claims at a connection's end, which it
        # never saw)
        assert escrow.claimed + escrow.refunded == DEPOSIT
        assert escrow.refunded >= DEPOSIT - fee(SLA, 1 << 16, 1)
        with OpenedBook(book) as left:
            assert left.entries() == []
    finally:
        ledger.close()
