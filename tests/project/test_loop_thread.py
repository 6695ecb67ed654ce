"""The event loop in a thread that the tests' asyncio servers and drivers run on
(dtp/testing/_loops.py): it stops only after a few more passes, so a transport closed in
what would have been its last pass still runs its connection_lost (closed while still
"closing", it warned as unclosed in whichever test the garbage collector ran in next);
``close(cancel=True)`` ends what was left pending; a second close does nothing; the
loop's uncaught errors are collected when asked."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dtp.testing._loops import LoopThread, loop_in_thread


class _Watched(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _transport_on(thread: LoopThread) -> tuple[asyncio.BaseTransport, _Watched, socket.socket]:
    """A transport on ``thread``'s loop over one end of a socket pair: (it, its
    protocol, the other end)."""
    ours, theirs = socket.socketpair()
    watched = _Watched()

    async def connect() -> asyncio.BaseTransport:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
            lambda: watched, ours
        )
        return transport

    return thread.run(connect()), watched, theirs


def test_a_transport_closed_in_the_last_pass_runs_its_connection_lost() -> None:
    thread = LoopThread()
    transport, watched, theirs = _transport_on(thread)
    with theirs:
        # queued before the close's own work: without more passes, the loop would stop
        # in the pass that runs it, its connection_lost still to run
        thread.loop.call_soon_threadsafe(transport.close)
        thread.close()
    assert watched.lost
    assert thread.closed


def test_close_with_cancel_ends_what_is_pending_and_closes_its_transports() -> None:
    thread = LoopThread()
    transport, watched, theirs = _transport_on(thread)
    ended: list[str] = []

    async def serve_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("cancelled")
            transport.close()

    thread.submit(serve_forever())
    with theirs:
        thread.close(cancel=True)
    assert ended == ["cancelled"]
    assert watched.lost


def test_a_second_close_does_nothing() -> None:
    thread = LoopThread()
    thread.close()
    thread.close()
    assert thread.closed
    work = asyncio.sleep(0)
    with pytest.raises(RuntimeError):  # (closed: it takes no more work)
        thread.submit(work)
    work.close()


def test_uncaught_errors_are_collected_when_asked() -> None:
    thread = LoopThread(catch_errors=True)

    def fails() -> None:
        raise ValueError("in a callback")

    thread.loop.call_soon_threadsafe(fails)
    thread.run(asyncio.sleep(0.01))
    thread.close()
    assert [type(e.get("exception")) for e in thread.errors] == [ValueError]


def test_loop_in_thread_yields_a_running_loop_and_stops_it() -> None:
    with loop_in_thread() as loop:
        assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "ran"), loop).result(5) == "ran"
    assert loop.is_closed()
