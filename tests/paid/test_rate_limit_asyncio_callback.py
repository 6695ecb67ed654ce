"""The asyncio paid server holds a callback that never drains to the client's bytes/s
limit.

Stream bytes are charged to the rate limit as they go, not only in drain(), and while
the limit is in debt they are held and let out in slices of its burst: a callback that
writes and closes (a usual asyncio pattern) sends to a client limited to 100 kB/s in the
time the limit asks, as the blocking server does. Real LocalLedger file, real
connections on 127.0.0.1.

asyncio only: a write that does not wait, and drain(), are the asyncio driver's; the
blocking sendall waits out the limit itself (held to it in test_rate_smoothness.py and
test_rate_limit_wait_ends.py on both servers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.aio import DTPStreamReader, DTPStreamWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.paid_twins import ident

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=100_000)
SERVER, CLIENT = ident(0x7B), ident(0x7C)
PORT = 7
RATE = 100_000  # bytes/s: a burst of 25 kB
TOTAL = 256 << 10
CHUNK = 32 << 10


Handler = Callable[[DTPStreamReader, DTPStreamWriter], Awaitable[None]]


def _download(tmp_path: Path, write: Handler) -> tuple[bytes, float]:
    """A paid asyncio server whose callback reads the client's "go", then runs ``write``
    and closes; the client, limited to RATE bytes/s, reads to the end: what it read,
    and how long that took from its "go"."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    ledger.faucet(CLIENT.sui_address, 10_000_000)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "download", SLA)
    ledger.set_client_limits(SERVER, host_id, 0, RATE, 0)

    def download() -> tuple[bytes, float]:
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}", timeout=60, ledger=ledger, identity=CLIENT, deposit=10**6
        ) as sock:
            sock.sendall(b"go")
            start, got = time.monotonic(), bytearray()
            while data := sock.recv(1 << 16):  # (until the end: b"")
                got += data
            return bytes(got), time.monotonic() - start

    async def main() -> tuple[bytes, float]:
        async def handler(reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
            await reader.readexactly(2)
            await write(reader, writer)
            writer.close()
            await writer.wait_closed()

        server = await dtp.aio.serve(
            host_id, PORT, handler, ledger=ledger, identity=SERVER, receipts=tmp_path / "r.db"
        )
        try:
            return await asyncio.to_thread(download)
        finally:
            server.close()
            await server.wait_released(10)

    try:
        return asyncio.run(main())
    finally:
        ledger.close()


@pytest.mark.parametrize("chunk", [CHUNK, TOTAL], ids=["writes", "one-write"])
@pytest.mark.parametrize("drain", [False, True], ids=["write-only", "write-drain"])
def test_a_callback_that_does_not_drain_is_held_to_the_rate(
    tmp_path: Path, drain: bool, chunk: int
) -> None:
    """Whether it drains or not, in many writes or one: the room a write finds is the
    limit's burst, not only what the limit owes."""

    async def write(reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
        for _ in range(TOTAL // chunk):
            writer.write(b"x" * chunk)
            if drain:
                await writer.drain()

    got, took = _download(tmp_path, write)
    assert got == b"x" * TOTAL
    # all but the burst at the limit: (256 KiB - 25 kB) / 100 kB/s = 2.4 s
    assert took >= 0.8 * (TOTAL - RATE / 4) / RATE


def test_write_eof_with_the_last_bytes_is_held_to_the_rate_and_ends_after_them(
    tmp_path: Path,
) -> None:
    """``write_eof(data)`` (the answer and the stream's end in one record where the limit
    lets it go at once): under a bytes/s limit its bytes are held as a write's are, and
    the end follows the last of them."""

    async def write(reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
        writer.write_eof(b"y" * 8 + b"x" * (TOTAL - 8))
        await writer.drain()

    got, took = _download(tmp_path, write)
    assert got == b"y" * 8 + b"x" * (TOTAL - 8)
    assert took >= 0.8 * (TOTAL - RATE / 4) / RATE
