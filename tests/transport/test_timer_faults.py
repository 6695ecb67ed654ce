"""A connection whose pass in the process's timer thread raises is aborted, as a
server's handshake thread aborts one its code failed on: the peer reads INTERNAL_ERROR,
the carrier is released, and the application's calls raise ConnectionClosed (one too
broken even to close ends as a lost carrier: ConnectionLost). It never lives on
half-alive, unscheduled, with none of its timers running (keepalive, idle timeout,
retransmission) and its carrier open for good. The thread goes on serving the other
connections, and goes back to sleep.

The fault is injected where it cannot be made to happen for real: the connection's
one non-blocking pass (``Engine.poll``) is replaced by one that raises.

Kept apart from test_timer_faults_asyncio.py: a fault in the one timer thread, which must
survive it, is a driver concern, not a rule the event loop's callbacks share."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed, ConnectionLost
from dtp.protocol.connection import CloseCode, ConnectionConfig
from tests.support.polling import wait_for
from tests.transport.small_window import (
    SERVER_ID,
    WINDOW,
    accept_both,
    connect_client,
    thread_cpu_seconds,
)

#: How long the broken connection may take to end (generous, for a loaded machine)
BOUND = 30.0


@pytest.fixture
def server() -> Iterator[dtp.socket.DTPServer]:
    # a small stream window: a client's sendall() returns with bytes held back by flow
    # control, which the timer thread then writes out as the credit comes
    config = ConnectionConfig(identity=SERVER_ID, is_client=False, stream_window=WINDOW)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, config=config) as srv:
        yield srv


def _timer_thread() -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == "dtp-timers")


def _inject(sock: dtp.socket.DTPSocket, fault: BaseException) -> list[BaseException]:
    """Make every pass on ``sock``'s connection raise ``fault``: the faults raised."""
    engine = sock._engine
    raised: list[BaseException] = []

    def fail() -> None:
        if engine.closed or engine.pumping:
            return  # as poll() does: no pass on a closed connection, or a driven one
        raised.append(fault)
        raise fault

    engine.poll = fail  # type: ignore[method-assign]
    return raised


def _check_aborted(
    broken: dtp.socket.DTPSocket, broken_peer: dtp.socket.DTPSocket, fault: BaseException
) -> None:
    """``broken`` was aborted for ``fault``: its carrier released, its application's
    calls and its peer's reads end with typed errors."""
    engine = broken._engine
    assert wait_for(lambda: engine.carrier_closed, BOUND), "the connection lives on"
    assert engine.closed
    assert engine.sock.fileno() == -1  # the descriptor went back to the process
    with pytest.raises(ConnectionClosed) as closed:
        broken.recv(1)
    assert closed.value.code == CloseCode.INTERNAL_ERROR
    assert closed.value.__cause__ is fault
    with pytest.raises(ConnectionClosed):
        broken.sendall(b"more")
    # the peer reads what came before, then the end: INTERNAL_ERROR -- or the reset
    # of a carrier closed with its credit unread (a timeout here, after 60 s, would be
    # a connection it never heard of again)
    broken_peer.settimeout(60)
    with pytest.raises(ConnectionLost):
        while broken_peer.recv(1 << 20):
            pass


def _check_serving(
    timers: threading.Thread,
    healthy: dtp.socket.DTPSocket,
    healthy_peer: dtp.socket.DTPSocket,
) -> None:
    """The timer thread lives on, serves ``healthy``, and is idle again."""
    healthy.sendall(b"b" * (8 * WINDOW))  # most of it held back: the thread writes it
    healthy_peer.settimeout(60)
    got = 0
    while got < 8 * WINDOW:
        data = healthy_peer.recv(1 << 20)
        assert data
        got += len(data)
    assert timers.is_alive()
    assert _timer_thread() is timers  # the same thread: not one started since
    before = thread_cpu_seconds(timers)
    time.sleep(0.5)
    spent = thread_cpu_seconds(timers) - before
    assert spent < 0.1, f"the timer thread spent {spent:.2f} s of CPU"


@pytest.mark.parametrize(
    "fault",
    [RuntimeError("a fault in one connection"), SystemExit(3)],
    # SystemExit: a push callback's sys.exit(), run in the timer thread, ended the
    # thread (and every connection's timers with it)
    ids=["exception", "sys-exit"],
)
def test_a_connection_whose_timer_pass_raises_is_aborted(
    server: dtp.socket.DTPServer, fault: BaseException
) -> None:
    with connect_client(server) as broken, connect_client(server) as healthy:
        broken_peer, healthy_peer = accept_both(server, broken, healthy)
        try:
            broken.sendall(b"hello")  # all of it goes: the connection is not watched
            broken_peer.settimeout(60)
            assert broken_peer.recv(5) == b"hello"
            timers = _timer_thread()
            raised = _inject(broken, fault)
            # its next timer pass (within a second) raises; the application does
            # nothing with the connection meanwhile
            _check_aborted(broken, broken_peer, fault)
            assert len(raised) == 1
            _check_serving(timers, healthy, healthy_peer)
        finally:
            broken_peer.abort()
            healthy_peer.abort()


def test_a_watched_connection_whose_pass_raises_is_aborted_at_once(
    server: dtp.socket.DTPServer,
) -> None:
    with connect_client(server) as broken, connect_client(server) as healthy:
        broken_peer, healthy_peer = accept_both(server, broken, healthy)
        try:
            broken.sendall(b"a" * (4 * WINDOW))  # returns with bytes queued: watched
            broken_peer.settimeout(60)
            assert broken_peer.recv(1)
            timers = _timer_thread()
            fault = RuntimeError("a fault in one connection")
            raised = _inject(broken, fault)
            assert broken_peer.recv(1 << 20)  # its credit comes back: its pass raises
            _check_aborted(broken, broken_peer, fault)
            # the first fault ended it: dropped from the watch only, it was left to its
            # next timer pass, which raised again
            assert len(raised) == 1
            _check_serving(timers, healthy, healthy_peer)
        finally:
            broken_peer.abort()
            healthy_peer.abort()


def test_a_connection_too_broken_to_close_is_released_all_the_same(
    server: dtp.socket.DTPServer,
) -> None:
    with connect_client(server) as broken, connect_client(server) as healthy:
        broken_peer, healthy_peer = accept_both(server, broken, healthy)
        try:
            timers = _timer_thread()
            fault = RuntimeError("a fault in one connection")

            def fail(code: int, reason: str) -> None:
                raise RuntimeError("and in its close")

            # its pass raises, and so does the CLOSE the abort would send
            broken._engine.conn.close = fail  # type: ignore[method-assign]
            raised = _inject(broken, fault)
            engine = broken._engine
            assert wait_for(lambda: engine.carrier_closed, BOUND), "the connection lives on"
            assert engine.sock.fileno() == -1
            # ended as a lost carrier ends it: a typed error, not a connection that
            # never ended (BlockingIOError from a blocking socket's recv)
            with pytest.raises(ConnectionLost) as lost:
                broken.recv(1)
            assert lost.value.__cause__ is fault
            broken_peer.settimeout(60)
            with pytest.raises(ConnectionLost):
                broken_peer.recv(1)
            assert len(raised) == 1
            _check_serving(timers, healthy, healthy_peer)
        finally:
            broken_peer.abort()
            healthy_peer.abort()
