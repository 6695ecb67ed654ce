"""A client of the release before receipt format version 2 (docs/escrow.md §6) on a paid
server of this one: its RECEIPT frame carries a 129-byte version-1 receipt, bound to the
connection alone. Both paid servers refuse it and close the connection with
CLOSE_PAYMENT_REQUIRED, whose reason says which version came: the client's next call
raises PaymentRequired with it. The ledger connection is then settled with nothing
claimed: the whole deposit goes back to the client.

Real LocalLedger files and receipt stores, real connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import PaymentRequired
from dtp.hostid.paid import PaidServer, PaidSocket
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments.receipts import fee, object_id_bytes
from dtp.protocol.connection import ConnectionConfig
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident, loop_in_thread, stop
from tests.support.polling import wait_for
from tests.support.scopes import v1_receipt_bytes
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER = ident(0xC3)
CLIENT = ident(0xC4)
PORT = 34
DEPOSIT = 100_000


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PaidWorld]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as (ledger, server_ledger, host):
        yield PaidWorld(ledger, server_ledger, host, tmp_path)


def _echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


async def _echo_aio(reader: PaidReader, writer: PaidWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@contextmanager
def _serving(api: str, world: PaidWorld) -> Iterator[Any]:
    receipts = world.tmp_path / "receipts.db"
    if api == "blocking":
        with PaidServer(
            world.host_id, PORT, _echo, ledger=world.server_ledger, identity=SERVER,
            receipts=receipts,
        ) as server:  # fmt: skip
            yield server
        return
    with loop_in_thread() as loop:
        started = dtp.aio.serve(
            world.host_id, PORT, _echo_aio, ledger=world.server_ledger, identity=SERVER,
            receipts=receipts,
        )  # fmt: skip
        aio: PaidAioServer = asyncio.run_coroutine_threadsafe(started, loop).result(30)
        try:
            yield aio
        finally:
            asyncio.run_coroutine_threadsafe(stop(aio), loop).result(60)


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_version_1_receipt_closes_the_connection_saying_why(api: str, world: PaidWorld) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 10**9)
    cid = world.ledger.open_connection(CLIENT, world.host_id, PORT, cap, DEPOSIT).connection_id
    with _serving(api, world) as server:
        config = ConnectionConfig(
            identity=CLIENT, is_client=True, connection_id=object_id_bytes(cid), port=PORT
        )
        with dtp.socket.create_connection(
            server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT,
            config=config,
        ) as sock:  # fmt: skip
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            old = v1_receipt_bytes(cid, 8, 1, fee(SLA, 8, 1), 1, CLIENT)
            engine = sock._engine
            with engine.lock:
                engine.conn.send_receipt(old)
                engine.flush()
            # (the refusal closes the connection at the handler's next call, docs/escrow.md
            # §6.1: more data brings one)
            sock.sendall(b"more")
            with pytest.raises(PaymentRequired) as refused:
                while sock.recv(65536):
                    pass
        assert "Receipt format version 1 is not supported" in str(refused.value)
        assert wait_for(lambda: is_settled(world.ledger, cid), 30)
    escrow = settled_escrow(world.ledger, cid)
    assert (escrow.claimed, escrow.refunded) == (0, DEPOSIT)
