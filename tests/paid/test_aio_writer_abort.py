"""dtp.aio.serve: a PaidWriter holding what the receipt gate did not let out yet is
aborted (abort()) while another task waits in its drain() or wait_closed(). Those
raised CancelledError, though nobody cancelled their task (the abort cancels the task
letting the held bytes out, and they awaited it): a handler awaiting drain() ended as if
cancelled. Now drain() raises the wrapped writer's ConnectionClosed, as
DTPStreamWriter.drain() does after abort(), and wait_closed() returns; a drain() that is
itself cancelled still raises CancelledError. Real LocalLedger file, real DTP
connections on 127.0.0.1; the client pays nothing, so the gate holds the server's
writes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import dtp.aio
from dtp.errors import ConnectionClosed
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from tests.support.ledger_server import identity_from_seed

PORT = 7
SERVER = identity_from_seed(0x77)
CLIENT = identity_from_seed(0x78)
# no receipt ever comes: the gate holds the writes well past the test
POLICY = ServicePolicy(allowance=500, pause_timeout=60)


Handler = Callable[[PaidWriter, dict[str, object]], Awaitable[None]]


def _serve_held(tmp_path: Path, handler: Handler) -> dict[str, object]:
    """Serve one client whose server-side handler wrote past the gate's allowance, then
    runs ``handler(writer, seen)``; returns what it recorded in ``seen``."""
    book = LocalLedger(tmp_path / "ledger.db")
    host_id = book.create_host(SERVER, SERVER.noise_public)
    book.add_service(SERVER, host_id, PORT, "held", Sla(10, 5, 5000))
    book.faucet(CLIENT.sui_address, 10_000_000)
    server_book = LocalLedger(tmp_path / "ledger.db")
    seen: dict[str, object] = {}

    async def main() -> None:
        done = asyncio.Event()

        async def callback(reader: PaidReader, writer: PaidWriter) -> None:
            try:
                await reader.readexactly(5)
                writer.write(b"x" * 100_000)  # beyond the allowance: held
                assert writer.get_write_buffer_size() > 0
                await handler(writer, seen)
            finally:
                done.set()

        server = await dtp.aio.serve(
            host_id,
            PORT,
            callback,
            ledger=server_book,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=POLICY,
        )
        _reader, writer = await dtp.aio.open_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=book,
            identity=CLIENT,
            deposit=200_000,
            timeout=10,
            metering=MeteringConfig(enabled=False),
        )
        writer.write(b"hello")
        await writer.drain()
        await asyncio.wait_for(done.wait(), 20)
        writer.close()
        await writer.wait_closed()
        server.close()
        assert await server.wait_released(20)

    try:
        asyncio.run(main())
    finally:
        server_book.close()
        book.close()
    return seen


async def _outcome(task: asyncio.Future[None]) -> str:
    try:
        await task
    except BaseException as exc:  # (what it raised is the point)
        return type(exc).__name__
    return "returned"


def test_abort_does_not_raise_cancelled_error_in_other_tasks_waits(tmp_path: Path) -> None:
    async def handler(writer: PaidWriter, seen: dict[str, object]) -> None:
        drain = asyncio.ensure_future(writer.drain())
        closed = asyncio.ensure_future(writer.wait_closed())
        for _ in range(5):
            await asyncio.sleep(0)  # both wait on what is held now
        assert not drain.done() and not closed.done()
        writer.abort()
        seen["drain"] = await _outcome(drain)
        seen["wait_closed"] = await _outcome(closed)
        task = asyncio.current_task()
        assert task is not None
        seen["cancelling"] = task.cancelling()

    seen = _serve_held(tmp_path, handler)
    assert seen == {
        "drain": ConnectionClosed.__name__,
        "wait_closed": "returned",
        "cancelling": 0,
    }


def test_a_cancelled_drain_of_held_bytes_still_raises_cancelled_error(
    tmp_path: Path,
) -> None:
    async def handler(writer: PaidWriter, seen: dict[str, object]) -> None:
        drain = asyncio.ensure_future(writer.drain())
        for _ in range(5):
            await asyncio.sleep(0)
        drain.cancel()
        seen["drain"] = await _outcome(drain)
        seen["still held"] = writer.get_write_buffer_size() > 0  # (on its way still)
        writer.abort()

    seen = _serve_held(tmp_path, handler)
    assert seen == {"drain": "CancelledError", "still held": True}
