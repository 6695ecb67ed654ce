"""An asyncio writer never overwrites records its transport still holds.

``DTPStreamWriter.write`` hands the transport a view into the lane's seal buffer. Up to
Python 3.11 asyncio's socket transport copied what it could not send at once; from 3.12
it queues the object it is given, so the next seal overwrote records still waiting to
be sent and the peer failed to authenticate them (found on 3.12.1: a 4 MiB burst of
writes before drain() died at 3.9 MiB). The lane now seals into a new buffer whenever
the transport kept some of the last one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

import dtp.aio as daio
import dtp.transport.asyncio._streams as streams
from dtp.identity.keys import HostIdentity

CHUNK, COUNT = 64 * 1024, 64  # 4 MiB: within the flow-control window


class _Recording:
    """A transport whose writes of views it kept (a backed-up carrier) are recorded with
    the bytes they held then: what a transport that keeps views would send later."""

    def __init__(self, real: Any, kept: list[tuple[memoryview, bytes]]) -> None:
        self._real, self._kept = real, kept

    def write(self, data: Any) -> None:
        self._real.write(data)
        if self._real.get_write_buffer_size() and isinstance(data, memoryview):
            self._kept.append((data, bytes(data)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_views_given_to_a_keeping_transport_stay_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    # the rule as 3.12 has it, on any version: the stdlib transport keeps what it is given
    monkeypatch.setattr(streams, "_VIEWS_KEPT", True)
    identity = HostIdentity.generate()
    payload = os.urandom(CHUNK * COUNT)
    kept: list[tuple[memoryview, bytes]] = []

    async def main() -> bytes:
        got = asyncio.get_running_loop().create_future()

        async def handler(r: daio.DTPStreamReader, w: daio.DTPStreamWriter) -> None:
            await asyncio.sleep(0.3)  # the client's carrier backs up meanwhile
            data = bytearray()
            while chunk := await r.read(1 << 20):
                data += chunk
            got.set_result(bytes(data))
            w.close()

        server = await daio.start_server(handler, "127.0.0.1", 0, identity=identity)
        async with server:
            _, w = await daio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=10
            )
            # the protocol's transport wrapped, not patched: uvloop's transports take no
            # attribute of their own (its write is read-only); the test runs on both loops
            proto = w._proto
            monkeypatch.setattr(proto, "transport", _Recording(proto.transport, kept))
            for i in range(COUNT):
                w.write(payload[i * CHUNK : (i + 1) * CHUNK])
            await w.drain()
            w.write_eof()
            received = await asyncio.wait_for(got, 20)
            w.close()
            await w.wait_closed()
            return received

    received = asyncio.run(main())
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert kept, "the carrier never backed up: nothing was tested"
    assert all(bytes(view) == snapshot for view, snapshot in kept)


def test_which_transports_keep_views() -> None:
    class Other(asyncio.Transport):
        pass

    assert streams._keeps_views(Other())  # not asyncio's own: taken to keep them
