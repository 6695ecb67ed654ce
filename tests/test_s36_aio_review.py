"""dtp.aio against asyncio's StreamWriter and Server contracts (s36 review), over real
DTP connections on 127.0.0.1.

* A ``drain()`` waiting (the peer not reading) when its own writer was closed went on
  waiting: for good on a stream other than the first, for CLOSE_LINGER on the first,
  though a drain() after close() raises ConnectionClosed at once. A writing task whose
  stream another task closed hung.
* A client callback that misused a live stream (a write after ``write_eof()``) raised
  LocalProtocolError, which went to dtp.aio's logger at INFO: nobody saw the bug, the
  client only read an abort. asyncio.start_server reports it to the loop's exception
  handler, as dtp.aio does any other exception of the callback.
* ``serve_forever()`` on a closed server on the ledger carrier alone returned at once
  (asyncio's raises RuntimeError, as dtp.aio's TCP server did).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dtp.aio
from dtp.chain.local import LocalLedger
from dtp.errors import ConnectionClosed, LocalProtocolError
from dtp.keys import HostIdentity
from tests.hostid.test_aio_ledger_server import (
    PORT,
    SERVER,
    ledger,  # noqa: F401 (a fixture)
)
from tests.test_s35_aiostreams_review import _connected


def _fill(writer: dtp.aio.DTPStreamWriter) -> None:
    """Write until drain() must wait: the peer reads nothing, so flow control holds
    what is past its window."""
    chunk = b"y" * (256 * 1024)
    for _ in range(64):
        if writer.get_write_buffer_size() >= dtp.aio.SEND_HIGH_WATER:
            return
        writer.write(chunk)
    raise AssertionError("flow control held nothing back")


@pytest.mark.parametrize("first_stream", [True, False])
def test_a_drain_waiting_when_its_writer_closes_raises_at_once(first_stream: bool) -> None:
    async def main() -> None:
        server, (_reader, writer), (_, server_writer) = await _connected()
        if first_stream:
            stream_writer = writer
        else:
            _, stream_writer = await writer.open_stream()
        _fill(stream_writer)
        waiting = asyncio.ensure_future(stream_writer.drain())
        for _ in range(3):
            await asyncio.sleep(0)  # (it runs to its wait)
        assert not waiting.done()
        stream_writer.close()
        # (it waited for good on another stream, CLOSE_LINGER on the first)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(waiting, 2)
        server_writer.abort()  # (the server never reads: no linger in the cleanup)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_callbacks_misuse_of_a_live_stream_goes_to_the_exception_handler() -> None:
    """A write after write_eof() in the callback is reported as asyncio reports a
    callback's exception, and the server goes on. A write after the callback's own
    abort() (the connection ended) is not: it is the connection's end, at INFO."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        seen = asyncio.Event()

        def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            reported.append(context)
            seen.set()

        loop.set_exception_handler(handler)
        calls = 0
        returned = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            nonlocal calls
            calls += 1
            try:
                if calls == 1:
                    writer.write(b"half")
                    writer.write_eof()
                    writer.write(b"oops")  # LocalProtocolError: the callback's bug
                elif calls == 2:
                    writer.abort("bye")
                    writer.write(b"late")  # (the connection ended: not reported)
                else:
                    writer.write(b"fine")
                    writer.close()
            finally:
                returned.set()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            await asyncio.wait_for(seen.wait(), 2)  # (never, on the old code)
            assert len(reported) == 1
            assert reported[0]["message"] == "Unhandled exception in client_connected_cb"
            assert isinstance(reported[0]["exception"], LocalProtocolError)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

            returned.clear()
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            await asyncio.wait_for(returned.wait(), 5)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            assert await asyncio.wait_for(reader.read(), 5) == b"fine"  # (it goes on)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        assert len(reported) == 1, reported

    asyncio.run(asyncio.wait_for(main(), 20))


def test_serve_forever_on_a_closed_server_raises(
    ledger: tuple[LocalLedger, str],  # noqa: F811 (the fixture)
) -> None:
    """As asyncio.Server.serve_forever: RuntimeError, on the ledger carrier alone too
    (it returned at once), and on TCP."""
    book, host_id = ledger

    async def main() -> None:
        on_ledger = await dtp.aio.start_server(
            lambda r, w: None,
            None,
            None,
            identity=SERVER,
            ledger=book,
            host_id=host_id,
            dtp_port=PORT,
        )
        on_ledger.close()
        await asyncio.wait_for(on_ledger.wait_closed(), 10)
        with pytest.raises(RuntimeError, match="is closed"):
            await asyncio.wait_for(on_ledger.serve_forever(), 2)

        on_tcp = await dtp.aio.start_server(
            lambda r, w: None, "127.0.0.1", 0, identity=HostIdentity.generate()
        )
        on_tcp.close()
        await on_tcp.wait_closed()
        with pytest.raises(RuntimeError, match="is closed"):
            await asyncio.wait_for(on_tcp.serve_forever(), 2)

    asyncio.run(asyncio.wait_for(main(), 20))
