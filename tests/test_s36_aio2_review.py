"""dtp.aio, second reading of the s36 review's fix (a drain() waiting when its writer is
closed raises at once), over real DTP connections on 127.0.0.1.

* A client callback whose drain() waited (the client reading slowly) while another task
  closed its writer -- a watchdog, a server's shutdown -- now raised ConnectionClosed at
  once; out of the callback, the server took it for the callback's failure on a live
  connection and aborted it: the close lingering to send what was queued was cut short,
  and the client read an error instead of the data and a clean end (the drain waited for
  the close before, and the data went out).
"""

from __future__ import annotations

import asyncio
from typing import Any

import dtp.aio
from dtp.keys import HostIdentity

CHUNK = b"z" * (256 * 1024)


def test_a_callbacks_writer_closed_by_another_task_while_it_drains_still_flushes() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        written = 0
        closed = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            nonlocal written
            # the client reads nothing yet: flow control holds the rest back
            for _ in range(64):
                if writer.get_write_buffer_size() >= dtp.aio.SEND_HIGH_WATER:
                    break
                writer.write(CHUNK)
                written += len(CHUNK)
            else:
                raise AssertionError("flow control held nothing back")

            # another party closes the stream once this drain() waits (call_soon runs
            # after the task suspended in it)
            def close() -> None:
                writer.close()
                closed.set()

            loop.call_soon(close)
            # (raised out of the callback, as by one that does not catch it: the
            # connection's end, not a failure to abort on)
            await writer.drain()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public, timeout=5
        )
        try:
            await asyncio.wait_for(closed.wait(), 5)  # (read from the close on)
            # all that was written comes, then a clean end (it was cut by an abort)
            data = await asyncio.wait_for(reader.read(), 5)
            assert len(data) == written
            assert await reader.read() == b""
            assert reported == []  # (the connection's own end: not the callback's bug)
        finally:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))
