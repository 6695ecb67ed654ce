"""AsyncRpcServer shares its loop among the streams it serves: one client flooding it
with junk must not hold the others' calls (a large read is taken in pieces, and back to
back reads let the loop run now and then)."""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time

from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer

#: Empty frames: the costliest bytes to take (each is a violation).
JUNK = b"\x00\x00\x00\x00" * 16384


def test_a_junk_flood_does_not_hold_other_clients_calls() -> None:
    """Before, the flooding stream's coroutine took read after read without the loop
    running (its reader's buffer never empty): another client's echo took ~1-2.5 s
    (now ~0.15 s)."""

    async def main() -> float:
        rpc = AsyncRpcServer()
        rpc.register("echo", lambda p: p)
        served: list[asyncio.Task[None]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                await rpc.serve(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stop = threading.Event()
        flooding = threading.Event()

        flood_sock = socket.create_connection(("127.0.0.1", port))

        def flood() -> None:
            try:
                while not stop.is_set():
                    flood_sock.sendall(JUNK)
                    flooding.set()
            except OSError:
                pass  # (shut down: the test is over)

        def good() -> float:
            # a client on its own loop (thread): only the server's loop is measured
            async def calls() -> float:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                client = AsyncRpcClient(reader, writer)
                times: list[float] = []
                try:
                    for i in range(10):
                        started = time.monotonic()
                        assert await client.call("echo", i, timeout=10) == i
                        times.append(time.monotonic() - started)
                finally:
                    await client.close()
                    writer.close()
                    await writer.wait_closed()
                return statistics.median(times)

            flooding.wait(5)
            return asyncio.run(calls())

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            return await asyncio.to_thread(good)
        finally:
            stop.set()
            flood_sock.shutdown(socket.SHUT_RDWR)  # ends a sendall the server holds up
            await asyncio.to_thread(flooder.join, 5)
            flood_sock.close()
            server.close()
            await server.wait_closed()
            for task in served:  # (the flood's stream still holds megabytes of junk)
                task.cancel()
            await asyncio.gather(*served, return_exceptions=True)

    # a loop held by the flood holds every call 1-2.5 s; a fair one answers in about
    # 0.15 s. The median of the ten, so that one call slowed by a loaded machine (1.2 s
    # seen) does not decide
    assert asyncio.run(main()) < 0.6
