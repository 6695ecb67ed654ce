"""dtp.aio: a metered client connection (by host ID) that ends without ``close()`` is
half-closed on the ledger all the same, as the blocking API's: by ``abort()``, and when
its reader and writer were garbage-collected unclosed (the connection itself was left
open for good then, keepalives holding off the idle timeout). Left Open, the half-close
timeout never started and the deposit stayed locked until the client settled by hand.
On a LocalLedger file, the server admitting through the ledger (an admit-only server,
which settles nothing itself)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._settlement import publish_endpoint
from tests.support.ledger_server import identity_from_seed
from tests.support.paid_twins import hosted_ledger

PORT = 7
SERVER = identity_from_seed(0x71)
CLIENT = identity_from_seed(0x72)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host with a service on PORT; a funded client."""
    with hosted_ledger(tmp_path, SERVER, CLIENT, PORT, Sla(10, 5, 1000)) as hosted:
        yield hosted


async def _echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()


async def _served(
    book: LocalLedger, host_id: str
) -> tuple[dtp.aio.DTPServer, dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
    server = await dtp.aio.start_server(
        _echo, "127.0.0.1", 0, identity=SERVER, ledger=book, host_id=host_id, dtp_port=PORT
    )
    await asyncio.to_thread(publish_endpoint, book, SERVER, host_id, server.address)
    reader, writer = await dtp.aio.open_connection(
        f"dtp://{host_id}:{PORT}", ledger=book, identity=CLIENT, deposit=5000, timeout=10
    )
    writer.write(b"metered")
    await writer.drain()
    assert await reader.readexactly(7) == b"metered"
    return server, reader, writer


async def _state_becomes(book: LocalLedger, cid: str, state: ConnectionState) -> bool:
    for _ in range(500):  # up to ~10 s
        if (await asyncio.to_thread(book.get_connection, cid)).state == state:
            return True
        await asyncio.sleep(0.02)
    return False


def test_abort_of_a_metered_connection_half_closes_it_on_the_ledger(
    ledger: tuple[LocalLedger, str],
) -> None:
    """abort() then wait_closed(): the ledger connection is HalfClosed (it stayed Open)."""
    book, host_id = ledger

    async def main() -> None:
        server, _reader, writer = await _served(book, host_id)
        cid = writer.connection_id
        assert cid is not None
        writer.abort()
        await asyncio.wait_for(writer.wait_closed(), 10)
        state = (await asyncio.to_thread(book.get_connection, cid)).state
        assert state == ConnectionState.HALF_CLOSED
        writer.abort()  # again: nothing more (no second half-close)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 10)
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_an_abandoned_metered_connection_is_closed_and_half_closed(
    ledger: tuple[LocalLedger, str],
) -> None:
    """Reader and writer dropped unclosed: the connection ends (the server's callback
    sees the end) and the ledger connection is half-closed."""
    book, host_id = ledger

    async def main() -> None:
        server, reader, writer = await _served(book, host_id)
        cid = writer.connection_id
        assert cid is not None
        proto = writer._proto
        del reader, writer
        gc.collect()
        assert await asyncio.wait_for(asyncio.shield(proto.closed_future), 10) is None
        assert proto.session.terminated is not None
        assert await _state_becomes(book, cid, ConnectionState.HALF_CLOSED)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
