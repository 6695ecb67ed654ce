"""The blocking engine's wake-up descriptor (dtp.transport.blocking._engine): readable once
woken until taken, closed once, and its close wakes a thread still waiting on it (as
the socket pair's close did: a stream blocked while its connection is collected must
end, tests/transport/test_socket_threads.py). An eventfd under the operating system's
scheduler, the installed scheduler's socket pair under another."""

from __future__ import annotations

import select
import socket
import threading

import pytest

from dtp.transport.blocking import sched
from dtp.transport.blocking._engine import Waker, _EventWaker, _PairWaker, make_waker
from dtp.transport.carriers._tcp import wait_ready


def _readable(waker: Waker) -> bool:
    return bool(wait_ready([waker], [], 0)[0])


@pytest.mark.parametrize("kind", [_EventWaker, _PairWaker])
def test_a_wake_is_seen_until_taken(kind: type[Waker]) -> None:
    waker = kind()
    try:
        assert not _readable(waker) and not waker.take()
        waker.wake()
        waker.wake()
        assert _readable(waker)
        assert waker.take()  # (both wakes at once)
        assert not _readable(waker) and not waker.take()
    finally:
        waker.close()
    assert waker.fileno() == -1
    waker.close()  # (again: nothing)
    waker.wake()  # (after the close: nothing)
    assert not waker.take()


@pytest.mark.parametrize("kind", [_EventWaker, _PairWaker])
def test_the_close_wakes_a_thread_polling_it(kind: type[Waker]) -> None:
    waker = kind()
    fd = waker.fileno()
    woke = threading.Event()

    def wait() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if poller.poll(10_000):
            woke.set()

    thread = threading.Thread(target=wait)
    thread.start()
    try:
        assert not woke.wait(0.1)  # (it waits)
        waker.close()
        assert woke.wait(10)
    finally:
        waker.close()
        thread.join(10)
    assert not thread.is_alive()


def test_an_eventfd_under_the_systems_scheduler_a_pair_under_another() -> None:
    assert sched.installed() is sched.REAL
    waker = make_waker()
    try:
        assert isinstance(waker, _EventWaker)
    finally:
        waker.close()
    made: list[socket.socket] = []

    class Other:
        def socketpair(self) -> tuple[socket.socket, socket.socket]:
            pair = socket.socketpair()
            made.extend(pair)
            return pair

    saved = sched.socketpair
    sched.socketpair = Other().socketpair  # (as sched.install puts a scheduler's)
    try:
        waker = make_waker()
    finally:
        sched.socketpair = saved
    try:
        assert isinstance(waker, _PairWaker) and len(made) == 2
    finally:
        waker.close()
    assert all(s.fileno() == -1 for s in made)
