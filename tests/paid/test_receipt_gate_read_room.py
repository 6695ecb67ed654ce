"""A paid server's read is cut only by what the receipt gate allows, not by the paid
layer's own bookkeeping of its credit (the bytes left before it asks the gate again):
a bulk read cut there left the rest of a carrier read to the general path, copied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dtp.socket
from dtp.hostid.paid import PaidSocket
from dtp.hostid.paid._policy import CREDIT_MAX
from dtp.ledger._objects import Sla
from tests.support.paid_inprocess import ident, paid_service

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1 << 30)
SERVER, CLIENT = ident(0x71), ident(0x72)


def test_a_read_past_the_credit_left_asks_the_gate_rather_than_stop(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        assert sock.recv(1) == b"a"
        paid = sock._paid
        # the credit run down to a few bytes, as a bulk read leaves it every few MiB
        paid.credit.read = 100
        seen["room"] = paid.room(1 << 20)
        seen["credit"] = paid.credit.read
        seen["gate"] = paid.gate.credit_bytes(*paid.engine.conn.usage)
        # and far past what the gate allows: cut there
        paid.credit.read = 100
        seen["room_beyond"] = paid.room(1 << 62)
        sock.sendall(b"ok")
        sock.recv(1)

    with (
        paid_service(tmp_path, SERVER, CLIENT, 81, SLA, handle) as service,
        dtp.socket.create_connection(
            service.address, timeout=10, ledger=service.ledger, identity=CLIENT, deposit=1 << 30
        ) as sock,
    ):
        sock.sendall(b"a")
        assert sock.recv(2) == b"ok"
    # the gate allows far more than the read: the whole read goes, and the credit is
    # what the gate allows now (up to the bound between looks)
    assert seen["gate"] > 1 << 20
    assert seen["room"] == 1 << 20
    assert seen["credit"] == min(seen["gate"], CREDIT_MAX)
    assert seen["room_beyond"] == min(seen["gate"], CREDIT_MAX)
