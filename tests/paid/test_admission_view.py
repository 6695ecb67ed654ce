"""Both paid servers meter and settle a connection with the TransportControl and Escrow
their admission read (PaidServerCore.admission_view): the gate is made from them and the
settlement starts from them, rather than reading both again from the ledger.

Both drivers (the ``driver`` fixture), a real echo over 127.0.0.1 and a LocalLedger file
in tmp_path; ``gate_for`` and ``settle_ended`` are wrapped where the servers look them
up (the server module; the books both servers keep), and still run."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dtp.hostid._admission import Admitted
from dtp.hostid.paid._server_core import PaidServerCore
from dtp.ledger._objects import Sla
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1000)
SERVER, CLIENT = ident(0xB1), ident(0xB2)
PORT = 7102


def test_the_gate_and_the_settlement_go_on_with_what_admission_read(
    tmp_path: Path, driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module(driver.server_module)
    books = importlib.import_module("dtp.hostid.paid._server_books")
    seen: dict[str, Any] = {}
    gate_for, settle_ended = module.gate_for, books.settle_ended

    def gate_seen(*args: Any, **kwargs: Any) -> Any:
        seen["gate"] = kwargs.get("admitted")
        return gate_for(*args, **kwargs)

    def settle_seen(*args: Any, **kwargs: Any) -> Any:
        seen["settle"] = (kwargs.get("connection"), kwargs.get("escrow"))
        return settle_ended(*args, **kwargs)

    monkeypatch.setattr(module, "gate_for", gate_seen)
    monkeypatch.setattr(books, "settle_ended", settle_seen)
    with funded_ledger(tmp_path, CLIENT) as ledger:
        with driver.connected(
            ledger, "echo", host=SERVER, client=CLIENT, port=PORT, sla=SLA, deposit=5000
        ) as (_, sock):
            cid = sock.connection_id
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            sock.close()  # (the connection ends while the server runs on)
            assert cid is not None
            assert wait_for(lambda: is_settled(ledger, cid), 10.0)
        settled = settled_escrow(ledger, cid)
    admitted = seen["gate"]
    assert admitted is not None and admitted.connection.id == cid
    connection, escrow = seen["settle"]
    assert connection is admitted.connection and escrow is admitted.escrow
    # and the claim made from them is right: fees claimed, the rest refunded, none lost
    assert settled.claimed > 0 and settled.claimed + settled.refunded == settled.deposited


def test_a_view_of_another_connection_is_not_gone_on_with() -> None:
    view = Admitted(SimpleNamespace(id="0x" + "aa" * 32), None)  # type: ignore[arg-type]
    assert PaidServerCore.admission_view(view, "0x" + "aa" * 32) is view
    assert PaidServerCore.admission_view(view, "0x" + "bb" * 32) is None
    assert PaidServerCore.admission_view(None, "0x" + "aa" * 32) is None
