"""A paused paid connection asks its client for a receipt once per ``request_interval``
(docs/escrow.md §6.1, "asks for a receipt every 200 ms"), however many of its calls are
paused: the rule is the engine's (PaidConnectionEngine.request_due), both drivers ask it,
so two paused calls or a call retried at once do not ask more often.

Both paid servers (the ``driver`` fixture): a handler with two calls paused at once (a
read and a datagram read), or one read tried again every 10 ms, and a client that never
pays (it sends a byte, its first request); the server's RECEIPT_REQUEST frames are
counted until the pause timeout closes the connection. Real connections on
127.0.0.1, a LocalLedger file in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import DTPError
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.payments._gate import RECEIPT_REQUEST
from dtp.payments.metering import MeteringConfig
from dtp.protocol.connection._core import Connection
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger

#: the client's first bytes make its first request: with no allowance, unpaid at once
SLA = Sla(price_per_kib=1024, price_per_request=1, min_deposit=1000)
INTERVAL = 0.2
POLICY = ServicePolicy(allowance=0, pause_timeout=1.5, request_interval=INTERVAL)
SERVER, CLIENT = ident(0xA1), ident(0xA2)
PORT = 7101


def _request_in(sock: PaidSocket) -> None:
    """Until the client's request (its byte) is in: the calls that follow pause."""
    engine = sock._paid.engine
    with engine.lock:
        engine.pump(lambda: engine.conn.usage[1] > 0, 10)


async def _request_in_aio(writer: PaidWriter) -> None:
    conn = writer._paid.conn
    async with asyncio.timeout(10):
        while not conn.usage[1]:
            await asyncio.sleep(0.005)


def _paused_twice(sock: PaidSocket) -> None:
    """A read and a datagram read, both paused (the client pays nothing)."""
    _request_in(sock)

    def datagram() -> None:
        with contextlib.suppress(DTPError):
            sock.recv_datagram()

    other = threading.Thread(target=datagram, daemon=True)
    other.start()
    with contextlib.suppress(DTPError):
        sock.recv(10)
    other.join(10)


async def _paused_twice_aio(reader: PaidReader, writer: PaidWriter) -> None:
    await _request_in_aio(writer)
    await asyncio.gather(reader.read(10), writer.recv_datagram(), return_exceptions=True)


def _tried_again(sock: PaidSocket) -> None:
    """A non-blocking read tried again every 10 ms while paused."""
    _request_in(sock)
    sock.setblocking(False)
    with contextlib.suppress(DTPError):
        while True:
            try:
                sock.recv(10)
            except BlockingIOError:
                time.sleep(0.01)


async def _tried_again_aio(reader: PaidReader, writer: PaidWriter) -> None:
    """A read given up after 10 ms and made again while paused."""
    await _request_in_aio(writer)
    with contextlib.suppress(DTPError):
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(10), 0.01)


@pytest.mark.parametrize(
    "handlers", [(_paused_twice, _paused_twice_aio), (_tried_again, _tried_again_aio)]
)
def test_a_pause_asks_once_per_request_interval(
    tmp_path: Path, driver: Driver, monkeypatch: pytest.MonkeyPatch, handlers: Any
) -> None:
    """Two calls paused at once, or one tried again at once, ask once per interval."""
    asked: list[float] = []
    send_receipt = Connection.send_receipt

    def counted(self: Connection, receipt: bytes) -> None:
        if bytes(receipt) == RECEIPT_REQUEST:
            asked.append(time.monotonic())
        send_receipt(self, receipt)

    monkeypatch.setattr(Connection, "send_receipt", counted)
    with (
        funded_ledger(tmp_path, CLIENT) as ledger,
        driver.connected(
            ledger,
            handlers,
            host=SERVER,
            client=CLIENT,
            port=PORT,
            sla=SLA,
            deposit=10_000,
            kind="stream",
            metering=MeteringConfig(enabled=False),
            policy=POLICY,
        ) as (_, sock),
    ):
        sock.sendall(b"?")  # (the first stream's request: unpaid)
        began = time.monotonic()
        with contextlib.suppress(DTPError):
            while sock.recv(1 << 16) and time.monotonic() - began < 10:
                pass  # until the pause timeout closes the connection
    requests = asked
    assert len(requests) >= 2, requests  # it asks, and asks again
    # once per interval across both calls (give or take one at either end of the
    # pause), where each call asking on its own made it about twice as many
    span = requests[-1] - requests[0]
    assert len(requests) <= span / INTERVAL + 2, (len(requests), span)
