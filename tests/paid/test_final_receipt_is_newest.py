"""A paid server billing by bytes settles a connection from the receipt its CLOSE came
with, without reading its receipt store again (dtp.payments._settlement,
``final_is_newest``): every receipt stored of the connection went through the gate that
checked the final one, which refuses one for less, and the store held none when it was
served (dtp.payments._serving.served_refusal). One billed per request keeps reading:
its RPC bill stores receipts that gate never saw (tests/paid/test_serve_per_request.py).

Both drivers (the ``driver`` fixture), a real echo over 127.0.0.1 and a LocalLedger file
in tmp_path; ``settle_ended`` is wrapped where the servers look it up, and still runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dtp.hostid.paid._server_books as books
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1000)
SERVER, CLIENT = ident(0xB5), ident(0xB6)
PORT = 7105
CHUNK = 4096


def test_a_connection_billed_by_bytes_is_settled_from_its_final_receipt_alone(
    tmp_path: Path, driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    settle_ended = books.settle_ended

    def settle_seen(*args: Any, **kwargs: Any) -> Any:
        writer = args[3]  # (the receipt writer, which the settlement reads the store through)
        reads = []
        latest = writer.latest

        def counted(connection_id: str) -> Any:
            reads.append(connection_id)
            return latest(connection_id)

        writer.latest = counted
        try:
            outcome = settle_ended(*args, **kwargs)
        finally:
            del writer.latest
        seen.update(kwargs, final=args[4], reads=reads, outcome=outcome)
        return outcome

    monkeypatch.setattr(books, "settle_ended", settle_seen)
    with (
        funded_ledger(tmp_path, CLIENT) as ledger,
        driver.connected(
            ledger,
            "echo",
            host=SERVER,
            client=CLIENT,
            port=PORT,
            sla=SLA,
            deposit=50_000,
            metering=MeteringConfig(every_bytes=CHUNK),  # (receipts stored meanwhile)
        ) as (server, sock),
    ):
        cid = sock.connection_id
        assert cid is not None
        for _ in range(4):
            sock.sendall(bytes(CHUNK))
            got = 0
            while got < CHUNK:
                got += len(sock.recv(CHUNK - got))
        assert wait_for(lambda: server.store.latest(cid) is not None, 10.0)
        sock.close()  # (the connection ends while the server runs on)
        assert wait_for(lambda: is_settled(ledger, cid), 10.0)
        assert wait_for(lambda: "outcome" in seen, 10.0)
        # the final receipt, for all usage, claimed; the store not read for it
        final = seen["final"]
        assert final is not None and seen["final_is_newest"] is True
        assert seen["reads"] == []
        settled = settled_escrow(ledger, cid)
        assert settled.claimed == final.total_amount
        assert settled.claimed + settled.refunded == settled.deposited
        # the receipt stored before it is marked claimed: no recovery claims it again
        kept = server.store.latest(cid)
        assert kept is not None and kept.receipt.total_amount < final.total_amount
        assert wait_for(lambda: server.store.latest(cid).unclaimed == 0, 10.0)
