"""dtp.aio's stream reader against :class:`asyncio.StreamReader`'s contract,
over real DTP connections on 127.0.0.1.

A ``readexactly(n)`` that found fewer than ``n`` bytes buffered took them, then raised
RuntimeError ("called while another coroutine is already waiting") when it had to wait
for more while another task's read was waiting: the bytes it took were lost, for that
read and every later one (asyncio's raises before it consumes anything; a cancelled
readexactly already put them back).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.transport.aio_connections import served_connection


def test_readexactly_refused_for_a_waiting_read_keeps_the_bytes_it_took() -> None:
    """Task B wakes first on the server's b"abc" while task A's read(100) waits:
    B's readexactly(10) raises RuntimeError, and A then reads b"abc" (it read only the
    b"def" sent after: b"abc" was gone)."""

    async def main() -> None:
        server, (reader, writer), (_, server_writer) = await served_connection()
        loop = asyncio.get_running_loop()
        b_failed: asyncio.Future[BaseException] = loop.create_future()

        async def task_b() -> None:
            # (woken by the same arrival as A, and before it: its waiter came first)
            await reader._proto.wait_for(lambda: len(reader._buffer()) >= 3)
            try:
                await reader.readexactly(10)
            except BaseException as exc:
                b_failed.set_result(exc)
                raise

        b = asyncio.ensure_future(task_b())
        await asyncio.sleep(0)  # (B runs to its wait: its waiter is the first)
        a = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0)  # (A runs to its wait)
        server_writer.write(b"abc")
        await server_writer.drain()
        failure = await asyncio.wait_for(b_failed, 5)
        assert isinstance(failure, RuntimeError)
        with pytest.raises(RuntimeError):
            await b
        server_writer.write(b"def")  # (so that A returns even if it went on waiting)
        await server_writer.drain()
        assert await asyncio.wait_for(a, 5) == b"abc"
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"def"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))
