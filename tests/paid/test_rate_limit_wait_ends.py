"""A rate-limit wait ends with the connection (dtp.hostid.paid, dtp.hostid.paid._aio; docs/escrow.md
§6.1 "Runtime firewall"). A write is charged after the fact, so a large chunk at a low
rate leaves a long debt -- 256 KiB at 10 kB/s is 26 s -- and the paid server slept it
off in the handler: a client that had closed meanwhile was settled only that much later,
and the handler (and so the server's release of its receipt writer and store) outlived
the connection by as long. Both paid servers (the ``driver`` fixture), a real
LocalLedger file, real DTP connections on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.hostid.paid import PaidSocket
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.paid.conftest import Driver
from tests.support.paid_twins import funded_ledger, ident
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=100_000)
SERVER, CLIENT = ident(0x7B), ident(0x7C)
PORT = 7
CHUNK = b"x" * (256 << 10)
RATE = 10_000  # bytes per second: one chunk's debt is 26 s


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def _host(ledger: LocalLedger) -> str:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "slow", SLA)
    ledger.set_client_limits(SERVER, host_id, 0, RATE, 0)
    return host_id


def _client_reads_then_closes(ledger: LocalLedger, host_id: str) -> str:
    with dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}", timeout=10, ledger=ledger, identity=CLIENT, deposit=1_000_000
    ) as sock:
        sock.sendall(b"go")
        got = 0
        # the bytes come at the limit (dtp.payments._ratelimit's takes): a second's worth, and the
        # client leaves with the handler in the midst of the first chunk's wait
        while got < RATE:
            got += len(sock.recv(1 << 16))
        cid = sock.connection_id
        assert cid is not None
    return cid


def _settled_soon(ledger: LocalLedger, cid: str, ended: threading.Event, start: float) -> None:
    assert ended.wait(5), "the handler slept off the rate limit's debt"
    deadline = start + 5
    while not is_settled(ledger, cid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_settled(ledger, cid)
    assert time.monotonic() - start < 5  # before: 26 s
    escrow = settled_escrow(ledger, cid)
    assert escrow.claimed > 0 and escrow.claimed + escrow.refunded == 1_000_000
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def _two_chunks(ended: threading.Event) -> tuple[Any, Any]:
    """The handlers (blocking, asyncio): on "go", send two chunks, the second one only
    once the first one's debt is paid; ``ended`` set when the handler returns."""

    def blocking(sock: PaidSocket) -> None:
        try:
            assert sock.recv(2) == b"go"
            sock.sendall(CHUNK)
            sock.sendall(CHUNK)
        finally:
            ended.set()

    async def aio(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"
            for _ in range(2):
                writer.write(CHUNK)
                await writer.drain()
        finally:
            ended.set()

    return blocking, aio


def test_a_rate_wait_ends_with_the_connection(
    ledger: LocalLedger, tmp_path: Path, driver: Driver
) -> None:
    host_id = _host(ledger)
    ended = threading.Event()
    with driver.serve(
        host_id,
        PORT,
        _two_chunks(ended),
        ledger=ledger,
        identity=SERVER,
        receipts=tmp_path / "r.db",
    ):
        cid = _client_reads_then_closes(ledger, host_id)
        _settled_soon(ledger, cid, ended, time.monotonic())
