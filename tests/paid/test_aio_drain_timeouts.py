"""A PaidWriter's drain() bounded by the caller, as an asyncio user bounds any wait
(``asyncio.timeout``; the paid writer takes no timeout of its own, as none of the paid
asyncio calls does): a drain() cancelled while it waits for payment or for the rate
limits raises TimeoutError in time, leaves no credit held and nothing charged that did
not go, and what was written still goes, each byte once. The debt of what went
without a wait (datagrams) is waited for by the next drain() when the one that was
cancelled did not wait it out.

Real LocalLedger file, real DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dtp.aio
from dtp.errors import DTPError
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from tests.support.ledger_server import identity_from_seed

PORT = 7
SERVER = identity_from_seed(0x79)
CLIENT = identity_from_seed(0x7A)
SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1000)
RATE = 2000  # bytes/s: a burst of 500
SIZE = 6000  # 3 s of the rate

Handler = Callable[[PaidReader, PaidWriter, dict[str, Any]], Awaitable[None]]


def _serve(
    tmp_path: Path, handler: Handler, policy: ServicePolicy, *, pays: bool = True
) -> tuple[dict[str, Any], bytes]:
    """Serve one client (``pays``: it signs receipts, else none) whose stream sends b"g";
    the callback runs ``handler(reader, writer, seen)``. Returns what it recorded and
    every byte the client read on the stream until its end."""
    book = LocalLedger(tmp_path / "ledger.db")
    host_id = book.create_host(SERVER, SERVER.noise_public)
    book.add_service(SERVER, host_id, PORT, "drain", SLA)
    book.faucet(CLIENT.sui_address, 10_000_000)
    server_book = LocalLedger(tmp_path / "ledger.db")
    seen: dict[str, Any] = {}

    async def main() -> bytes:
        async def callback(reader: PaidReader, writer: PaidWriter) -> None:
            assert await reader.readexactly(1) == b"g"
            await handler(reader, writer, seen)

        server = await dtp.aio.serve(
            host_id,
            PORT,
            callback,
            ledger=server_book,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=policy,
        )
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=book,
            identity=CLIENT,
            deposit=1 << 20,
            timeout=10,
            metering=None if pays else MeteringConfig(enabled=False),
        )
        writer.write(b"g")
        await writer.drain()
        got = b""
        with contextlib.suppress(DTPError):
            async with asyncio.timeout(20):
                while data := await reader.read(65536):
                    got += data
        writer.close()
        with contextlib.suppress(DTPError):
            await writer.wait_closed()
        server.close()
        assert await server.wait_released(20)
        return got

    try:
        got = asyncio.run(main())
    finally:
        server_book.close()
        book.close()
    return seen, got


async def _bounded_drain(writer: PaidWriter, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError:
        return "TimeoutError"
    return "drained"


def test_a_drain_held_by_the_rate_limit_is_cancelled_by_its_timeout(tmp_path: Path) -> None:
    """6 kB written at 2,000 B/s: a drain() bounded to 0.2 s raises TimeoutError with
    most of it still held, no credit held by a write, and the usage no more than what
    went; the next drain() lets it all out, and the client reads each byte once."""
    payload = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)

    async def handler(reader: PaidReader, writer: PaidWriter, seen: dict[str, Any]) -> None:
        paid = writer._paid
        paid.buckets.bytes.set_rate(RATE, time.monotonic())
        before = paid.conn.usage[0]
        writer.write(payload)
        seen["outcome"] = await _bounded_drain(writer, 0.2)
        seen["held"] = writer.get_write_buffer_size()
        seen["sending"] = paid.credit.sending
        seen["went"] = paid.conn.usage[0] - before
        await writer.drain()
        seen["usage"] = paid.conn.usage[0] - before
        seen["debt"] = paid.buckets.bytes.delay(time.monotonic())

    seen, got = _serve(tmp_path, handler, ServicePolicy(pause_timeout=10.0))
    assert seen["outcome"] == "TimeoutError"
    assert seen["held"] > SIZE // 2
    assert seen["sending"] == 0
    assert seen["went"] <= SIZE - seen["held"]  # nothing charged that is still held
    assert seen["usage"] == SIZE
    assert seen["debt"] == 0
    assert got == payload


def test_a_drain_cancelled_in_the_wait_for_the_rate_limits_leaves_it_to_the_next(
    tmp_path: Path,
) -> None:
    """3 kB of datagrams go at once at 2,000 B/s, charged without a wait: a drain()
    bounded to 0.1 s raises TimeoutError in the wait for their debt, and the next
    drain() waits it out rather than return with the limit still in debt."""

    async def handler(reader: PaidReader, writer: PaidWriter, seen: dict[str, Any]) -> None:
        paid = writer._paid
        paid.buckets.bytes.set_rate(RATE, time.monotonic())
        seen["went"] = writer.send_datagrams([bytes(1000)] * 3)
        seen["outcome"] = await _bounded_drain(writer, 0.1)
        await writer.drain()
        seen["debt"] = paid.buckets.bytes.delay(time.monotonic())

    seen, _ = _serve(tmp_path, handler, ServicePolicy(pause_timeout=10.0))
    assert seen["went"] == 3
    assert seen["outcome"] == "TimeoutError"
    assert seen["debt"] == 0


def test_a_drain_paused_for_payment_is_cancelled_by_its_timeout(tmp_path: Path) -> None:
    """A client that pays nothing, 2 KiB of allowance, 20 kB written: a drain() bounded
    to 0.3 s raises TimeoutError while paused, no credit held by a write, the usage
    within the allowance and the rest still held (the connection closes at the pause
    timeout, 2 s)."""

    async def handler(reader: PaidReader, writer: PaidWriter, seen: dict[str, Any]) -> None:
        paid = writer._paid
        writer.write(bytes(20_000))
        seen["outcome"] = await _bounded_drain(writer, 0.3)
        seen["held"] = writer.get_write_buffer_size()
        seen["sending"] = paid.credit.sending
        seen["serving"] = paid.gate.serving(*paid.conn.usage)

    policy = ServicePolicy(allowance=2, pause_timeout=2.0, final_receipt_timeout=0.2)
    seen, got = _serve(tmp_path, handler, policy, pays=False)
    assert seen["outcome"] == "TimeoutError"
    assert seen["held"] > 0
    assert seen["sending"] == 0
    assert not seen["serving"]
    assert len(got) < 20_000
