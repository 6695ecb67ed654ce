"""The ``idle_memory_10k`` row of bench/compare.py: what an idle server connection
costs in resident memory -- 10,000 connections open at once, each having made one echo
of 100 bytes and then left idle -- ours (``dtp.aio``) against asyncio + TLS 1.3
(Python's ``ssl``), each server in a process of its own (bench/netpeers.py, ``echo``:
the handler waits in ``reader.read``). The figure is the server's RSS with the
connections open less its RSS before them (after a few warm-up connections, so that
lazy imports and first-use caches are not counted), over the count, in KiB; the ratio is
TLS's over ours, higher is better, bar 10.

The ``connections_10k`` row times the same opening: the seconds from the first connect
to the 10,000th connection's echo (64 connecting at once, the client ``dtp.aio`` or
asyncio + TLS 1.3 in the driver's process), TLS's over ours, bar 1.5."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.echo_memory import Stream, at_most, echo_once, server_rss_mib, with_echo_server
from bench.net import Peer
from bench.workload import Floor, Workload

CONNECTIONS = 10_000
CONCURRENCY = 64
WARM_UP = 32  # connections made and closed before the baseline
SETTLE = 2.0  # seconds between the last connection and the look at the server's memory
PAYLOAD = b"i" * 100


async def _close(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()
    for _, writer in streams:
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


async def _open_many(peer: Peer, dtp_side: bool, count: int) -> list[Stream]:
    """``count`` connections, each after one echo; left open."""
    return await at_most(CONCURRENCY, count, lambda: echo_once(peer, dtp_side, PAYLOAD, 120))


async def _measure(peer: Peer, dtp_side: bool, count: int) -> float:
    await _close(await _open_many(peer, dtp_side, WARM_UP))
    await asyncio.sleep(SETTLE)
    before = server_rss_mib(peer.proc.pid)
    streams = await _open_many(peer, dtp_side, count)
    await asyncio.sleep(SETTLE)
    after = server_rss_mib(peer.proc.pid)
    await _close(streams)
    return (after - before) * 1024 / count


async def _open_seconds(peer: Peer, dtp_side: bool, count: int) -> float:
    await _close(await _open_many(peer, dtp_side, WARM_UP))
    started = time.perf_counter()
    streams = await _open_many(peer, dtp_side, count)
    took = time.perf_counter() - started
    await _close(streams)
    return took


def open_seconds(kind: str, connections: int) -> float:
    """Start a ``kind`` echo server and return the seconds ``connections`` connections
    take to open, 64 at a time, each echoing once."""
    return with_echo_server(
        kind, lambda peer, dtp_side: asyncio.run(_open_seconds(peer, dtp_side, connections))
    )


def connections_10k(connections: int = CONNECTIONS) -> Workload:
    count = connections
    return Workload(
        "connections_10k",
        "s",
        1,
        lambda: open_seconds("dtp-asyncio", count),
        lambda: open_seconds("tls-asyncio", count),
        measured=True,
        lower_is_better=True,
        rounds=1,
        bar=1.5,
        note=(
            f"seconds to open {count:,} connections, 64 at a time, one echo each: "
            "asyncio+TLS's / ours (dtp.aio)"
        ),
    )


def idle_kib_per_connection(kind: str, connections: int) -> float:
    """Start a ``kind`` echo server (``dtp-asyncio`` or ``tls-asyncio``), hold
    ``connections`` idle connections to it and return the RSS each adds, in KiB."""
    return with_echo_server(
        kind, lambda peer, dtp_side: asyncio.run(_measure(peer, dtp_side, connections))
    )


def idle_memory_10k(connections: int = CONNECTIONS) -> Workload:
    count = connections
    return Workload(
        "idle_memory_10k",
        "KiB/conn",
        1,
        lambda: idle_kib_per_connection("dtp-asyncio", count),
        lambda: idle_kib_per_connection("tls-asyncio", count),
        measured=True,
        lower_is_better=True,
        rounds=1,
        bar=Floor(15),
        note=(
            f"server RSS per idle connection, {count:,} open at once (one echo each): "
            "asyncio+TLS's / ours (dtp.aio)"
        ),
    )


if __name__ == "__main__":
    import sys

    # python -m bench.idle_rows dtp-asyncio|tls-asyncio [CONNECTIONS]: one side alone
    n = int(sys.argv[2]) if len(sys.argv) > 2 else CONNECTIONS
    start = time.perf_counter()
    print(
        sys.argv[1],
        n,
        f"{idle_kib_per_connection(sys.argv[1], n):.1f} KiB/conn",
        f"({time.perf_counter() - start:.0f} s)",
    )
