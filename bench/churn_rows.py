"""The ``churn_memory`` row of bench/compare.py: a server's resident memory once a
stream of short connections has gone through it -- 80,000 of them, at most 64
connecting at once, each one echo of 100 bytes -- ours (``dtp.aio``) against asyncio +
TLS 1.3 (Python's ``ssl``), each server in a process of its own (bench/netpeers.py),
measured 5 s after the last connection (dtp.transport._admission gives the heap back at such a
quiet moment, and once more 3 s later). The ratio is TLS's RSS over ours: higher is
better, bar 0.5. Before, ours held 420 MiB against 45 MiB (0.11)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.echo_memory import at_most, echo_once, server_rss_mib, with_echo_server
from bench.net import Peer
from bench.workload import Floor, Workload

CONNECTIONS = 80_000
QUICK_CONNECTIONS = 4_000
CONCURRENCY = 64
REST = 5.0  # seconds between the last connection and the look at the server's memory
PAYLOAD = b"m" * 100


async def _one(peer: Peer, dtp_side: bool) -> None:
    """One connection: connect, one echo, close."""
    _, writer = await echo_once(peer, dtp_side, PAYLOAD, timeout=60)
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


def rss_after_churn(kind: str, connections: int, concurrency: int = CONCURRENCY) -> float:
    """Start a ``kind`` echo server (``dtp-asyncio`` or ``tls-asyncio``), put
    ``connections`` through it, at most ``concurrency`` connecting at once, rest
    :data:`REST` seconds, and return its RSS in MiB."""

    def measure(peer: Peer, dtp_side: bool) -> float:
        asyncio.run(at_most(concurrency, connections, lambda: _one(peer, dtp_side)))
        time.sleep(REST)
        return server_rss_mib(peer.proc.pid)

    return with_echo_server(kind, measure)


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
        bar=Floor(1.0),
        note=(
            f"server RSS after {count:,} connections, at most {CONCURRENCY} connecting at "
            f"once, {REST:g} s after the last: asyncio+TLS's / ours (dtp.aio)"
        ),
    )
