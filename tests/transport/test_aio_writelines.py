"""``DTPStreamWriter.writelines``: a short head and a body (an RPC frame's length prefix
and message) go as one seal of both, the records those of the joined bytes, with no
joined copy made; anything else is ``write`` of the pieces joined."""

from __future__ import annotations

import asyncio
import os

import pytest

from dtp.errors import LocalProtocolError
from tests.transport.aio_connections import served_connection


async def _read(reader: object, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), 10)  # type: ignore[attr-defined]


def test_a_head_and_a_body_go_as_the_records_of_the_joined_bytes() -> None:
    async def main() -> None:
        server, (_, w), (r, _) = await served_connection()
        async with server:
            records = w._conn.records
            heads = []  # the heads the connection sealed with a body
            seal_fast = w._conn.seal_fast

            def spy(*args: object) -> object:
                heads.extend(args[3:])
                return seal_fast(*args)

            w._conn.seal_fast = spy
            for size in (1, 100, 16_000, 40_000):
                body = os.urandom(size)
                head = size.to_bytes(4, "big")
                before = records.records_sent
                w.writelines((head, body))
                await w.drain()
                assert await _read(r, 4 + size) == head + body
                parts = records.records_sent - before
                before = records.records_sent
                w.write(head + body)  # the same bytes joined: as many records
                await w.drain()
                assert await _read(r, 4 + size) == head + body
                assert records.records_sent - before == parts
            assert heads == [n.to_bytes(4, "big") for n in (1, 100, 16_000, 40_000)]
            w.close()

    asyncio.run(main())


def test_pieces_beyond_the_streams_credit_are_written_joined() -> None:
    async def main() -> None:
        server, (_, w), (r, _) = await served_connection()
        async with server:
            body = os.urandom(6 << 20)  # more than a stream's window (4 MiB)
            w.writelines((b"\x00\x60\x00\x00", body))
            reading = asyncio.ensure_future(_read(r, 4 + len(body)))
            await asyncio.wait_for(w.drain(), 20)
            assert await asyncio.wait_for(reading, 20) == b"\x00\x60\x00\x00" + body
            w.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "lines",
    [(b"ab", "str"), ("str", b"ab"), (b"ab", None), [b"ab", "str"]],
    ids=["str body", "str head", "None body", "list"],
)
def test_pieces_that_are_not_bytes_raise_as_write_of_their_join(lines: object) -> None:
    async def main() -> None:
        server, (_, w), _ = await served_connection()
        async with server:
            with pytest.raises(TypeError):
                w.writelines(lines)
            w.close()

    asyncio.run(main())


def test_a_closed_writer_refuses_the_pieces_as_write() -> None:
    async def main() -> None:
        server, (_, w), _ = await served_connection()
        async with server:
            w.close()
            with pytest.raises(LocalProtocolError):
                w.writelines((b"\x00\x00\x00\x01", b"x"))

    asyncio.run(main())
