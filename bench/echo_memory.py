"""What the memory rows (bench/churn_rows.py, bench/idle_rows.py) share: an echo server
of each kind in a process of its own (bench/netpeers.py), its resident memory, and
connections that each make one echo, opened a bounded number at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import dtp.aio
from bench.net import Peer

T = TypeVar("T")

Stream = tuple[
    asyncio.StreamReader | dtp.aio.DTPStreamReader, asyncio.StreamWriter | dtp.aio.DTPStreamWriter
]


def server_rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def with_echo_server(kind: str, measure: Callable[[Peer, bool], T]) -> T:
    """Start a ``kind`` echo server (``dtp-asyncio`` or ``tls-asyncio``), return
    ``measure(peer, dtp_side)`` and stop it."""
    peer = Peer(kind, "echo")
    try:
        return measure(peer, kind.startswith("dtp"))
    finally:
        peer.close()


async def echo_once(peer: Peer, dtp_side: bool, payload: bytes, timeout: float) -> Stream:
    """One connection to ``peer`` (ours, or asyncio + TLS 1.3) that echoes ``payload``
    once; left open."""
    if dtp_side:
        reader, writer = await dtp.aio.open_connection(
            *peer.endpoint, server_key=peer.key, timeout=timeout
        )
    else:
        reader, writer = await asyncio.open_connection(  # type: ignore[assignment]
            *peer.endpoint, ssl=peer.tls_context(), server_hostname="localhost"
        )
    writer.write(payload)
    await writer.drain()
    assert await reader.readexactly(len(payload)) == payload
    return reader, writer


async def at_most(concurrency: int, count: int, one: Callable[[], Awaitable[T]]) -> list[T]:
    """``one()`` ``count`` times, at most ``concurrency`` of them at once; their results."""
    turns = asyncio.Semaphore(concurrency)

    async def limited() -> T:
        async with turns:
            return await one()

    return list(await asyncio.gather(*(limited() for _ in range(count))))
