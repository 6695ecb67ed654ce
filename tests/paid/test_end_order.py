"""A served connection stops counting as its end begins, before its settlement: on both
paid servers (the ``driver`` fixture) a client that closes cleanly, settled before the
server's end of the carrier closes, is no longer among ``open_connections`` (nor its
client's rate-limit buckets held) while the settlement runs -- the blocking server
counted it until after its close. A real echo over 127.0.0.1 and a LocalLedger file;
``settle_ended`` is wrapped where the servers look it up (the books both keep), and still
runs."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from dtp.ledger._objects import Sla
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1000)
SERVER, CLIENT = ident(0xB7), ident(0xB8)
PORT = 7107


def test_a_connection_settled_first_no_longer_counts_during_its_settlement(
    tmp_path: Path, driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module("dtp.hostid.paid._server_books")
    settle_ended = module.settle_ended
    seen: list[tuple[int, bool]] = []
    servers: list[Any] = []

    def settle_seen(*args: Any, **kwargs: Any) -> Any:
        (server,) = servers
        seen.append((server.open_connections, CLIENT.sui_address in server.limiter.clients))
        return settle_ended(*args, **kwargs)

    monkeypatch.setattr(module, "settle_ended", settle_seen)
    with funded_ledger(tmp_path, CLIENT) as ledger:
        with driver.connected(
            ledger, "echo", host=SERVER, client=CLIENT, port=PORT, sla=SLA, deposit=5000
        ) as (server, sock):
            servers.append(server)
            cid = sock.connection_id
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            assert server.open_connections == 1
            sock.close()  # cleanly: the server settles before its end closes
            assert cid is not None
            assert wait_for(lambda: is_settled(ledger, cid), 10.0)
        settled = settled_escrow(ledger, cid)
    assert seen == [(0, False)]
    assert settled.claimed > 0 and settled.claimed + settled.refunded == settled.deposited
