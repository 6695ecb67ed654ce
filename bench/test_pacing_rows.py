"""bench/pacing_rows.py ends its paid connection as a provider would have it: its server
settles (claims what the client's receipts say) before the row takes the rest of the
deposit back by moving the LocalLedger's clock past the half-close timeout.

The row's server closes its end of the carrier first and settles after, and its
``close()`` returns before that settlement: the row took the deposits back at once, the
client settled alone, and the server's settlement, held up a moment, found the
connection settled and wrote its receipt off (0 claimed). The server's settlement is
held up here by a second, so that the order the row relies on is tested, not the
scheduler's luck."""

from __future__ import annotations

import time
from typing import Any

import pytest

import bench.pacing_rows as pacing_rows
import dtp.hostid.paid._server_books as server_books
import dtp.socket
from dtp.ledger.local import LocalLedger

_HELD = 1.0  # seconds the server's settlement is held up


def test_the_row_takes_its_deposit_back_only_after_its_server_claimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settle = server_books.settle_ended

    def held(*args: Any, **kwargs: Any) -> Any:
        time.sleep(_HELD)
        return settle(*args, **kwargs)

    monkeypatch.setattr(server_books, "settle_ended", held)  # (where the servers look it up)
    sockets: list[dtp.socket.DTPSocket] = []
    connect = dtp.socket.create_connection

    def recorded(*args: Any, **kwargs: Any) -> dtp.socket.DTPSocket:
        sock = connect(*args, **kwargs)
        sockets.append(sock)
        return sock

    monkeypatch.setattr(dtp.socket, "create_connection", recorded)
    outcome: dict[str, Any] = {}
    take_back = pacing_rows.take_back_deposits

    def taken_back(ledger: LocalLedger, identity: Any) -> int:
        settled = take_back(ledger, identity)
        (sock,) = sockets
        tc = ledger.get_connection(sock.connection_id or "")
        outcome["escrow"] = ledger.get_escrow(tc.escrow)
        outcome["audit"] = ledger.audit()
        return settled

    monkeypatch.setattr(pacing_rows, "take_back_deposits", taken_back)

    pacing_rows.upload_shares(paced=True, windows=1)

    (sock,) = sockets
    payment = sock._engine.hook
    assert payment is not None
    signed = payment.meter.latest
    assert signed is not None and signed.total_amount > 0
    escrow = outcome["escrow"]
    # the server was paid what the client's last receipt says, to the MIST, and the
    # client refunded the rest (before: 0 claimed, the whole deposit refunded)
    assert escrow.settled
    assert escrow.claimed == signed.total_amount
    assert escrow.refunded == escrow.deposited - signed.total_amount
    audit = outcome["audit"]
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
