"""A server gives its memory back after a stream of short connections
(dtp.transport._admission): at a quiet moment after churn -- no new connection for a second --
it collects the cycles its connections left and trims the heap, so that its resident
memory stays near what is in use, not growing with the connections served. The policy
alone, then both servers in a
process of their own (bench/compare.py ``churn_memory`` measures 80,000)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import pytest

import dtp.aio
from dtp.errors import HandshakeError
from dtp.transport._admission import AGAIN, HeapRelease, release_free_heap
from tests.support.procs import rss_kib, server_process
from tests.support.timing import bound

CONNECTIONS = 1500
CONCURRENCY = 64
TRIES = 5  # (connects a client makes of one connection: see _churn)
REST = 1.0 + AGAIN + 0.5  # (both trims of a quiet moment done)


# -- when ------------------------------------------------------------------------------


def test_a_quiet_moment_after_churn_is_the_time_to_trim() -> None:
    policy = HeapRelease(quiet=1.0, min_churn=3, churn=100, interval=10.0)
    assert policy.next_look(0.0) is None  # nothing happened yet
    for t in (0.0, 0.1, 0.2):
        policy.connected(t)
    assert not policy.due(0.5)  # connections came half a second ago
    assert policy.next_look(0.5) == pytest.approx(1.2)
    assert policy.due(1.2)  # quiet for a second after three
    assert policy.trims == 1
    assert policy.next_look(1.2) == pytest.approx(1.2 + AGAIN)  # once more, later
    assert not policy.due(2.0)
    assert policy.due(1.2 + AGAIN)  # (what closed after the first trim)
    assert not policy.due(9.0)  # (nothing since)
    assert policy.next_look(9.0) is None
    policy.connected(6.0)
    assert not policy.due(8.0)  # one connection is no churn


def test_steady_churn_trims_every_so_many_connections_at_most_so_often() -> None:
    policy = HeapRelease(quiet=1.0, min_churn=3, churn=100, interval=10.0)
    now = 0.0
    trims = []
    for _ in range(1000):  # 50 connections a second, never a quiet moment
        now += 0.02
        policy.connected(now)
        if policy.due(now):
            trims.append(now)
    # every 100 connections would be every 2 s: the interval holds it to every 10 s
    assert trims and all(b - a >= 10.0 for a, b in itertools.pairwise(trims))
    assert len(trims) == 2  # (20 s of churn)


def test_releasing_the_heap_says_whether_it_could() -> None:
    assert release_free_heap() in (True, False)  # (False where there is no malloc_trim)


# -- both servers ----------------------------------------------------------------------


async def _churn(endpoint: tuple[str, int], key: bytes) -> None:
    turns = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with turns:
            for attempt in range(TRIES):
                try:
                    reader, writer = await dtp.aio.open_connection(
                        *endpoint, server_key=key, timeout=30
                    )
                    break
                except HandshakeError:
                    # a server starved of CPU closes the handshakes its deadlines ran out
                    # on (its first-message and handshake timeouts, its lines'): a client
                    # tries again, as a user's would
                    if attempt == TRIES - 1:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            try:
                writer.write(b"churn")
                await writer.drain()
                assert await reader.readexactly(5) == b"churn"
            finally:
                # (also when another connection's failure cancels this one: its carrier
                # closed here, not left to the collector in a later test)
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(CONNECTIONS)))


def _lowest_rss(pid: int, seconds: float) -> int:
    """The server's lowest resident size (KiB) over ``seconds``: both trims of the
    quiet moment after churn fall in it (QUIET after the last connection the server
    took, which under load comes later than the client's last, then AGAIN later)."""
    lowest = rss_kib(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.25)
        lowest = min(lowest, rss_kib(pid))
    return lowest


def _rss_back_within(pid: int, bound: int, seconds: float) -> int:
    """The server's resident size (KiB) once it is below ``bound``, or the last seen
    after ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        rss = rss_kib(pid)
        if rss < bound or time.monotonic() >= end:
            return rss
        time.sleep(0.25)


@pytest.mark.timeout(300)  # (3,000 connections: a minute beside the rest of the suite)
@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_after_churn_a_server_s_memory_comes_back_near_where_it_was(api: str) -> None:
    with server_process("echo", api=api) as srv:
        asyncio.run(_churn(srv.endpoint, srv.key))  # (the first connections: warm)
        rested = _lowest_rss(srv.proc.pid, REST + 2.0)
        asyncio.run(_churn(srv.endpoint, srv.key))
        # quiet moments: the server trims (within REST of its last connection; the
        # deadline leaves room for a loaded machine, where the server takes its last
        # connection late and trims later: 1,500 more stood at +60 MiB and more, and grew
        # with more, before dtp.transport._admission)
        after = _rss_back_within(srv.proc.pid, rested + 16 * 1024, bound(REST + 15.0, REST + 45.0))
    assert after - rested < 16 * 1024, (api, rested, after)
