"""What a tunnel is on the wire, and the byte pump both ends share.

A DTP connection from a forwarder to the daemon carries, on stream 0, the control
channel (client → daemon: signed receipts, :data:`dtp.daemon.fees.RECEIPT_SIZE` bytes
each), and one further stream per forwarded TCP connection. On each tunnel stream the
daemon first answers one status: ``0x00`` (connected to a backend, bytes follow) or
``0x01`` + u16 length + UTF-8 reason (no tunnel; the stream ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Protocol

from dtp.errors import DTPError, TunnelError

__all__ = ["CHUNK", "STATUS_OK", "pump", "read_status", "refusal", "splice"]

CHUNK = 256 * 1024
STATUS_OK = b"\x00"
_REFUSED = 1


class _Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


def refusal(reason: str) -> bytes:
    """The status that refuses a tunnel with ``reason``."""
    raw = reason.encode("utf-8")[:1024]
    return bytes([_REFUSED]) + struct.pack(">H", len(raw)) + raw


async def read_status(reader: _Reader) -> None:
    """Read the daemon's status on a tunnel stream; raises :class:`TunnelError` with the
    daemon's reason when it refused."""
    first = await _exactly(reader, 1)
    if first == STATUS_OK:
        return
    if first[0] != _REFUSED:
        raise TunnelError(f"unexpected tunnel status byte {first[0]}")
    size = struct.unpack(">H", await _exactly(reader, 2))[0]
    raise TunnelError((await _exactly(reader, size)).decode("utf-8", "replace"))


async def _exactly(reader: _Reader, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await reader.read(n - len(data))
        if not chunk:
            raise TunnelError("the tunnel closed before the daemon answered")
        data += chunk
    return data


async def pump(source: _Reader, sink: _Writer, count: Callable[[int], None]) -> None:
    """Copy ``source`` to ``sink`` until EOF, then half-close ``sink``; ``count`` sees
    every chunk's size before it is forwarded (it may raise to stop the copy)."""
    while True:
        data = await source.read(CHUNK)
        if not data:
            break
        count(len(data))
        sink.write(data)
        await sink.drain()
    with contextlib.suppress(OSError, DTPError, RuntimeError):
        sink.write_eof()


async def splice(
    a_reader: _Reader,
    a_writer: _Writer,
    b_reader: _Reader,
    b_writer: _Writer,
    count_ab: Callable[[int], None],
    count_ba: Callable[[int], None],
) -> BaseException | None:
    """Pump both directions until both ended; if one fails, stop the other. Returns the
    first error (None after a clean end); both writers are closed."""
    tasks = [
        asyncio.ensure_future(pump(a_reader, b_writer, count_ab)),
        asyncio.ensure_future(pump(b_reader, a_writer, count_ba)),
    ]
    error: BaseException | None = None
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if exc is not None and error is None:
                    error = exc
                    for other in pending:
                        other.cancel()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (a_writer, b_writer):
            with contextlib.suppress(Exception):
                writer.close()
    return error
