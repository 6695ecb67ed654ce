"""A connection that ends while paused for payment serves none of the bytes still
buffered (docs/escrow.md §6.1): they came beyond what the client paid for, and a read
reports the end as it would with nothing buffered.

The asyncio reader, finding the connection ended at its pause, read one byte of them
per call: a handler's ``while await reader.read(n)`` (or ``async for line in reader``)
took the whole unpaid buffer, a byte a call, without once yielding to the event loop --
a megabyte held the loop, and every connect to the server, for the whole pause timeout
(tests/transport/test_close_code_delivery.py saw clients wait 10 s to connect, and some
closed in their handshake). The blocking ``recv_into`` cut the read to the gate's room
of 0 bytes, which the socket takes as "the whole buffer": one call served a buffer's
worth of unpaid bytes.

Both paid servers (the ``driver`` fixture); a client that signs no receipts sends until
the host's firewall denies it; real LocalLedger file, real DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import CLOSE_FIREWALL_DENIED, MeteringConfig
from tests.paid.conftest import Driver
from tests.support.paid_twins import funded_ledger, ident
from tests.support.polling import wait_for

SERVER, CLIENT = ident(0x5A), ident(0x5B)
PORT = 7
SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
#: 100 MIST at 10 MIST/KiB: the handler may read 10 KiB unpaid (less the request fee)
ALLOWANCE = 100
SERVED_AT_MOST = 64 << 10  # the allowance's 10 KiB and then some: never what is buffered
BUFFERED = 256 << 10  # unpaid bytes the server holds when the client is denied
#: Long: a read that spun through what is buffered, or waited for payment, ran into
#: the test's bounds first (the denial closes the connection within a refresh)
POLICY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=60.0, refresh_interval=0.2)
UNPAID = MeteringConfig(enabled=False)  # a client that signs no receipts
LINE = b"u" * 1023 + b"\n"
WAIT = 30.0


class Served:
    """What the handler saw: the bytes it was served, how its reads ended, when."""

    def __init__(self) -> None:
        self.usage: Callable[[], int] | None = None  # bytes the server received
        self.bytes = 0
        self.ended = threading.Event()
        self.ended_at = 0.0
        self.outcome: str = ""

    def end(self, outcome: str) -> None:
        self.outcome = outcome
        self.ended_at = time.monotonic()
        self.ended.set()


def _handlers(served: Served, way: str) -> tuple[Any, Any]:
    """The handlers (blocking, asyncio): read with ``way`` until the reads end --
    "bulk": recv_into, read(n); "lines": recv, ``async for`` lines; "until": a file's
    readline, readuntil."""

    def blocking(sock: PaidSocket) -> None:
        conn = sock._paid.engine.conn
        served.usage = lambda: conn.usage[0]
        buf = bytearray(1 << 16)
        try:
            with sock.makefile("rb") as file:
                while True:
                    if way == "bulk":
                        n = sock.recv_into(buf)
                    elif way == "lines":
                        n = len(sock.recv(1 << 16))
                    else:
                        n = len(file.readline())
                    if not n:
                        break
                    served.bytes += n
        except DTPError as exc:
            served.end(type(exc).__name__)
            return
        served.end("end")

    async def aio(reader: PaidReader, writer: PaidWriter) -> None:
        conn = reader._paid.conn
        served.usage = lambda: conn.usage[0]
        try:
            if way == "bulk":
                while data := await reader.read(1 << 16):
                    served.bytes += len(data)
            elif way == "lines":
                async for line in reader:
                    served.bytes += len(line)
            else:
                while True:
                    served.bytes += len(await reader.readuntil(b"\n"))
        except asyncio.IncompleteReadError as exc:
            served.bytes += len(exc.partial)
            served.end("end")
            return
        except DTPError as exc:
            served.end(type(exc).__name__)
            return
        served.end("end")

    return blocking, aio


def _send_until_denied(sock: dtp.socket.DTPSocket, out: list[BaseException]) -> None:
    try:
        while True:
            sock.sendall(LINE * 64)
    except DTPError as exc:
        out.append(exc)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", ["bulk", "lines", "until"])
def test_a_connection_denied_while_paused_serves_no_unpaid_bytes(
    driver: Driver, ledger: LocalLedger, way: str
) -> None:
    """A client that pays nothing sends until the server holds 256 KiB it has not paid
    for, then the host denies it: the handler's reads (each way) end within seconds of
    the denial -- not at the 60 s pause timeout, nor once all that is buffered was
    served -- having served no more than the allowance's worth."""
    served = Served()
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "sink", SLA)
    with driver.serve(
        host_id,
        PORT,
        _handlers(served, way),
        ledger=ledger,
        identity=SERVER,
        policy=POLICY,
        receipts=Path(ledger.path).parent / "receipts.db",
    ):
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=WAIT,
            ledger=ledger,
            identity=CLIENT,
            deposit=1_000_000,
            metering=UNPAID,
        ) as sock:
            raised: list[BaseException] = []
            sender = threading.Thread(target=_send_until_denied, args=(sock, raised))
            sender.start()
            try:
                assert wait_for(
                    lambda: served.usage is not None and served.usage() >= BUFFERED, timeout=WAIT
                ), "the server never held the unpaid bytes"
                assert not served.ended.is_set(), served.outcome  # (paused, waiting)
                denied_at = time.monotonic()
                ledger.deny(SERVER, host_id, CLIENT.sui_address)
                assert served.ended.wait(WAIT), "the handler's reads never ended"
            finally:
                sender.join(WAIT)
            assert not sender.is_alive()
        assert served.ended_at - denied_at < 15  # before (asyncio): a byte a call, for long
        assert served.bytes <= SERVED_AT_MOST, (served.bytes, served.outcome)
        assert len(raised) == 1 and isinstance(raised[0], ConnectionClosed), raised
        assert raised[0].code == CLOSE_FIREWALL_DENIED
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
