"""Both relays' reply path (dtp.hostid.udp._sockets.pass_replies): with no billing and
no rate limits it takes no engine call and no guard, and must count a run of the
backend's replies exactly as the engine's path does -- sent, oversized, left behind by
a backed-up carrier, or not sent at all because the send raised. Driven without
sockets: ``send`` is a stand-in."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import pytest

from dtp.errors import ConnectionClosed
from dtp.hostid.udp._engine import RelayEngine
from dtp.hostid.udp._sockets import pass_replies
from dtp.hostid.udp._stats import UdpStats
from dtp.payments._ratelimit import ClientBuckets, TokenBucket

LIMIT = 100
RUNS = {
    "all fit": [b"a" * 10, b"b" * 20, b"c" * 30],
    "one oversized": [b"a" * 10, b"b" * (LIMIT + 1), b"c" * 30],
    "all oversized": [b"x" * (LIMIT + 1)] * 2,
    "empty": [],
    "empty replies": [b"", b""],
}


def _engine(gated: bool) -> RelayEngine:
    # rate limits far above the run: gated, the engine is asked, but drops nothing
    limits = ClientBuckets(TokenBucket(10**9, 0.0), TokenBucket(10**9, 0.0)) if gated else None
    return RelayEngine(None, idle_timeout=60, report_every=32, limits=limits)


def _pass(
    run: list[bytes], send: Callable[[list[bytes]], int], gated: bool, shared: bool
) -> tuple[bool | None, UdpStats, list[list[bytes]]]:
    stats = UdpStats()
    given: list[list[bytes]] = []

    def recording(fits: list[bytes]) -> int:
        given.append(list(fits))
        return send(fits)

    guard: contextlib.AbstractContextManager[object] = threading.Lock()
    kw = {"guard": guard} if shared else {}
    try:
        went, frame = pass_replies(list(run), LIMIT, recording, stats, _engine(gated), **kw)
    except ConnectionClosed:
        return None, stats, given
    assert frame is None  # (no billing: no report is ever due)
    return went, stats, given


def _all(fits: list[bytes]) -> int:
    return len(fits)


def _first(fits: list[bytes]) -> int:
    return 1  # (the carrier backed up after the first)


def _raises(fits: list[bytes]) -> int:
    raise ConnectionClosed("the connection is closed")


@pytest.mark.parametrize("shared", [False, True], ids=["one thread", "threads"])
@pytest.mark.parametrize("send", [_all, _first, _raises], ids=["all sent", "one sent", "raised"])
@pytest.mark.parametrize("run", list(RUNS.values()), ids=list(RUNS))
def test_an_ungated_relay_counts_its_replies_as_the_engine_would(
    run: list[bytes], send: Callable[[list[bytes]], int], shared: bool
) -> None:
    went, stats, given = _pass(run, send, gated=False, shared=shared)
    expected = _pass(run, send, gated=True, shared=shared)
    assert (went, stats.snapshot(), given) == (expected[0], expected[1].snapshot(), expected[2])
    fitting = [d for d in run if len(d) <= LIMIT]
    assert given == ([fitting] if fitting else [])  # (nothing oversized is handed on)
    assert stats.dropped_oversized == len(run) - len(fitting)
    if fitting and send is _first:
        assert (stats.datagrams_out, stats.bytes_out) == (1, len(fitting[0]))
        assert stats.dropped_backlog == len(fitting) - 1
