"""The ``churn_memory`` row of bench/compare.py: a server's resident memory once a
stream of short connections has gone through it -- 80,000 of them, at most 64
connecting at once, each one echo of 100 bytes -- ours (``dtp.aio``) against asyncio +
TLS 1.3 (Python's ``ssl``), each server in a process of its own (bench/netpeers.py),
measured 5 s after the last connection (dtp.transport.heap_release gives the heap back at such a
quiet moment, and once more 3 s later). The ratio is TLS's RSS over ours: higher is
better, bar 0.5. Before, ours held 420 MiB against 45 MiB (0.11)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import dtp.aio
from bench.net import Peer
from bench.workload import Workload

CONNECTIONS = 80_000
QUICK_CONNECTIONS = 4_000
CONCURRENCY = 64
REST = 5.0  # seconds between the last connection and the look at the server's memory
PAYLOAD = b"m" * 100


def server_rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _one(peer: Peer, dtp_side: bool) -> None:
    """One connection: connect, one echo, close."""
    if dtp_side:
        reader, writer = await dtp.aio.open_connection(
            *peer.endpoint, server_key=peer.key, timeout=60
        )
    else:
        reader, writer = await asyncio.open_connection(  # type: ignore[assignment]
            *peer.endpoint, ssl=peer.tls_context(), server_hostname="localhost"
        )
    writer.write(PAYLOAD)
    await writer.drain()
    assert await reader.readexactly(len(PAYLOAD)) == PAYLOAD
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


async def _churn(peer: Peer, dtp_side: bool, connections: int, concurrency: int) -> None:
    turns = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with turns:
            await _one(peer, dtp_side)

    await asyncio.gather(*(one() for _ in range(connections)))


def rss_after_churn(kind: str, connections: int, concurrency: int = CONCURRENCY) -> float:
    """Start a ``kind`` echo server (``dtp-asyncio`` or ``tls-asyncio``), put
    ``connections`` through it, at most ``concurrency`` connecting at once, rest
    :data:`REST` seconds, and return its RSS in MiB."""
    peer = Peer(kind, "echo")
    try:
        asyncio.run(_churn(peer, kind.startswith("dtp"), connections, concurrency))
        time.sleep(REST)
        return server_rss_mib(peer.proc.pid)
    finally:
        peer.close()


def churn_memory(quick: bool = False, connections: int | None = None) -> Workload:
    """``quick``: :data:`QUICK_CONNECTIONS` rather than :data:`CONNECTIONS`."""
    count = connections or (QUICK_CONNECTIONS if quick else CONNECTIONS)
    return Workload(
        "churn_memory",
        "MiB",
        1,
        lambda: rss_after_churn("dtp-asyncio", count),
        lambda: rss_after_churn("tls-asyncio", count),
        measured=True,
        lower_is_better=True,
        rounds=1,
        bar=0.5,
        note=(
            f"server RSS after {count:,} connections, at most {CONCURRENCY} connecting at "
            f"once, {REST:g} s after the last: asyncio+TLS's / ours (dtp.aio)"
        ),
    )
