"""Bytes a blocking write leaves queued go out while the application does something
else: the peer's credit, or room in a full carrier, is acted on when it arrives (the
process's timer thread watches the carrier), not at the next one-second timer tick."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking._engine import TIMERS
from tests.support.polling import wait_for
from tests.transport.small_window import (
    SERVER_ID,
    WINDOW,
    accept_both,
    connect_client,
    thread_cpu_seconds,
)


@pytest.fixture
def server() -> Iterator[dtp.socket.DTPServer]:
    # the server's small stream window makes the client's sendall() return with most
    # of its bytes held back by flow control
    config = ConnectionConfig(identity=SERVER_ID, is_client=False, stream_window=WINDOW)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, config=config) as srv:
        yield srv


def _read_all(sock: dtp.socket.DTPSocket, size: int) -> tuple[int, float]:
    """Read ``size`` bytes: how many came, and how long it took."""
    start = time.monotonic()
    got = 0
    while got < size:
        data = sock.recv(1 << 20)
        if not data:
            break
        got += len(data)
    return got, time.monotonic() - start


def test_bytes_held_by_flow_control_follow_the_credit_while_the_writer_is_away(
    server: dtp.socket.DTPServer,
) -> None:
    size = 8 * WINDOW  # eight windows: eight credit updates to act on
    with connect_client(server) as client:
        peer, _ = server.accept(timeout=10)
        with peer:
            peer.settimeout(10)
            client.sendall(b"x" * size)  # returns with most of it queued
            # the client's thread now does nothing with the connection
            got, took = _read_all(peer, size)
    assert got == size
    # no credit update waits for the timer's tick (that takes about seven seconds, as
    # with watch() disabled), so 5 s leaves a loaded machine room
    assert took < 5.0, f"{size} bytes took {took:.2f} s to arrive"


def test_records_a_full_carrier_did_not_take_go_out_when_it_has_room() -> None:
    size = 3 << 20  # within the default windows: no flow control, only the carrier
    # the probe needs records left for a full carrier when sendall() returns; now and
    # then (a loaded machine, the slower pure-Python core) the receiving side has taken
    # them all by then, and that try proves nothing: a fresh connection tries again
    for _ in range(5):
        with (
            dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server,
            connect_client(server) as client,
        ):
            peer, _ = server.accept(timeout=10)
            with peer:
                peer.settimeout(10)
                engine = client._engine
                engine.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
                # the peer reads nothing meanwhile (but at its engine's timer passes, a
                # second apart): the call takes about 2.3 s here, and once took over
                # the 10 s of connect_client's timeout on a loaded CI machine
                client.settimeout(60)
                client.sendall(b"y" * size)
                probed = bool(engine.out)
                got, took = _read_all(peer, size)
        assert got == size
        if probed:
            break
    assert probed, "no try left records for a full carrier"
    # waiting for the timer's ticks took 1.74 s (watch() disabled); just below that
    assert took < 1.5, f"{size} bytes took {took:.2f} s to arrive"


def test_a_peer_that_never_reads_costs_the_timer_thread_nothing(
    server: dtp.socket.DTPServer,
) -> None:
    with connect_client(server) as client:
        peer, _ = server.accept(timeout=10)
        with peer:
            client.sendall(b"z" * (4 * WINDOW))  # held back for good: nobody reads
            assert client._engine.conn.send_buffered() > 0
            timers = next(t for t in threading.enumerate() if t.name == "dtp-timers")
            before = thread_cpu_seconds(timers)
            time.sleep(0.5)
            spent = thread_cpu_seconds(timers) - before
            assert spent < 0.1, f"the timer thread spent {spent:.2f} s of CPU"
            client.abort()
    # a closed connection is forgotten
    watched = TIMERS._watched
    wait_for(lambda: not any(ref() is client._engine for ref, *_ in watched.values()))


def test_a_write_that_leaves_nothing_queued_is_not_watched(
    server: dtp.socket.DTPServer,
) -> None:
    with connect_client(server) as client:
        peer, _ = server.accept(timeout=10)
        with peer:
            client.sendall(b"small")
            assert peer.recv(100) == b"small"
            watched = TIMERS._watched
            assert not any(ref() is client._engine for ref, *_ in watched.values())


def test_one_connection_failing_in_the_timer_thread_leaves_it_serving_the_others(
    server: dtp.socket.DTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    size = 8 * WINDOW
    with connect_client(server) as broken, connect_client(server) as healthy:
        broken_peer, healthy_peer = accept_both(server, broken, healthy)
        try:
            broken.sendall(b"a" * (4 * WINDOW))  # returns with bytes queued: watched
            # some of it is through (sent by sendall or, on a loaded machine, by the
            # timer thread's first pass) before the fault: what follows comes back as
            # credit, and the broken connection's next pass raises
            broken_peer.settimeout(60)
            assert broken_peer.recv(1)

            def fail() -> None:
                raise RuntimeError("a fault in one connection")

            broken._engine.poll = fail  # type: ignore[method-assign]
            assert broken_peer.recv(1 << 20)  # its credit comes back: its pass raises
            healthy.sendall(b"b" * size)
            healthy_peer.settimeout(10)
            got, _ = _read_all(healthy_peer, size)
            assert got == size
            assert wait_for(lambda: "dtp timer thread" in caplog.text)
            timers = next(t for t in threading.enumerate() if t.name == "dtp-timers")
            assert timers.is_alive()
            # ... and it does not come back to the failing pass again and again: its
            # carrier stays ready, and the thread spun on it, logging each time
            failures = caplog.text.count("dtp timer thread")
            before = thread_cpu_seconds(timers)
            time.sleep(0.5)
            spent = thread_cpu_seconds(timers) - before
            assert spent < 0.1, f"the timer thread spent {spent:.2f} s of CPU"
            assert caplog.text.count("dtp timer thread") - failures <= 1
        finally:
            broken_peer.abort()
            healthy_peer.abort()
