"""The blocking socket API under concurrency and failure, as users of :mod:`socket`
would use it: one thread blocked in a call while another closes, shuts down or drops
the socket; several threads waiting on one server; streams closed with bytes unread."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed, ConnectionLost, DTPTimeoutError, LocalProtocolError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.support.polling import wait_for
from tests.transport.half_handshakes import half_handshake, silent

SERVER_ID = HostIdentity.generate()


class Pair:
    """An in-process server, a client connection to it, and the accepted socket."""

    def __init__(self, config: ConnectionConfig | None = None) -> None:
        self.server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, config=config)
        self.client: dtp.socket.DTPSocket | None = dtp.socket.create_connection(
            self.server.address, timeout=10, server_key=SERVER_ID.noise_public
        )
        self.peer, _ = self.server.accept(timeout=10)

    def close(self) -> None:
        for sock in (self.client, self.peer):
            if sock is not None:
                sock.abort()
        self.server.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


class Call:
    """``fn()`` run in a thread of its own: what it returned or raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # reported to the test
            self.error = exc

    def join(self, timeout: float) -> bool:
        """True once the call has ended (within ``timeout`` seconds)."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _lent_stream(p: Pair) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
    """A second stream of the client's connection that carries data both ways (so the
    connection lends it to the C lane), and the server's end of it."""
    assert p.client is not None
    stream = p.client.open_stream()
    stream.settimeout(5)
    stream.sendall(b"a")
    peer = p.peer.accept_stream()
    peer.settimeout(5)
    assert peer.recv(1) == b"a"
    peer.sendall(b"b")
    assert stream.recv(1) == b"b"
    return stream, peer


# -- a first socket garbage-collected unclosed -----------------------------------------


def test_streams_of_a_garbage_collected_connection_fail_typed_and_touch_no_reused_fd(
    pair: Pair,
) -> None:
    """Dropping the first socket unclosed closes the carrier (as a collected
    socket.socket does); the connection's other streams then fail with ConnectionLost,
    never reading the carrier's old descriptor number through the C lane (a number the
    process may have handed to another socket already), never BlockingIOError from a
    blocking recv(), never a sendall() that drops data silently."""
    stream, _ = _lent_stream(pair)
    assert pair.client is not None
    old_fd = pair.client._engine.sock.fileno()
    pair.client = None
    gc.collect()
    # take the lowest free descriptors, as the next sockets the process opens would
    made: list[socket.socket] = []
    victim: socket.socket | None = None
    try:
        for _ in range(8):
            a, b = socket.socketpair()
            made += (a, b)
            for mine, other in ((a, b), (b, a)):
                if mine.fileno() == old_fd:
                    victim = mine
                    other.sendall(b"bytes of another socket")
            if victim is not None:
                break
        for call in (
            lambda: stream.recv(100),
            lambda: stream.recv_into(bytearray(100)),
            lambda: stream.sendall(b"x"),
            stream.open_stream,
        ):
            with pytest.raises(ConnectionLost, match="garbage-collected"):
                call()
        if victim is not None:
            victim.settimeout(5)
            assert victim.recv(100) == b"bytes of another socket"
    finally:
        for s in made:
            s.close()
    stream.close()


@pytest.mark.parametrize("what", ["recv", "sendall"])
def test_a_stream_blocked_while_its_connection_is_collected_ends_typed(
    pair: Pair, what: str
) -> None:
    stream, _ = _lent_stream(pair)
    stream.settimeout(None)
    if what == "recv":
        call = Call(lambda: stream.recv(100))
    else:
        call = Call(lambda: stream.sendall(b"x" * (64 << 20)))  # beyond every window
    assert pair.client is not None
    engine = pair.client._engine
    assert wait_for(lambda: engine.pumping)
    pair.client = None
    gc.collect()
    assert call.join(5)
    assert isinstance(call.error, ConnectionLost), call.error
    stream.close()


# -- the server -------------------------------------------------------------------------


def test_close_wakes_every_thread_blocked_in_accept() -> None:
    """close() wakes every thread blocked in accept(), not only the first."""
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    calls = [Call(server.accept) for _ in range(3)]
    assert wait_for(lambda: server._queue._ready.not_empty._waiters)  # type: ignore[attr-defined]
    assert wait_for(lambda: len(server._queue._ready.not_empty._waiters) == 3)  # type: ignore[attr-defined]
    server.close()
    for call in calls:
        assert call.join(5)
        assert isinstance(call.error, LocalProtocolError), call.error


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _handshake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dtp-handshake"]


def test_close_ends_handshakes_in_progress_at_once() -> None:
    """A TCP client that connected but has not finished its handshake (its first record,
    then nothing), and one that has sent nothing yet: close() ends both at once, with
    the thread serving the first and their descriptors, not at the handshake timeout
    (10 s) with nobody left to accept the connection."""
    assert wait_for(lambda: not _handshake_threads())
    fds = _fds()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    with half_handshake(server.address) as half, silent(server.address) as quiet:
        # its handshake has started once the accepting was passed on to a new thread
        assert wait_for(lambda: len(_handshake_threads()) == 2)
        assert wait_for(lambda: server.unproven == 1)
        server.close()
        for sock in (half, quiet):
            sock.settimeout(3)
            while sock.recv(100):  # (the handshake's reply, then the end)
                pass
        assert wait_for(lambda: not _handshake_threads(), 3)
    assert wait_for(lambda: _fds() <= fds, 3), _fds() - fds
    assert server.handshakes_failed == 0  # (the client did nothing wrong)


# -- a stream its reader gives up on ----------------------------------------------------


@pytest.mark.parametrize("how", ["shutdown", "close"])
def test_shutdown_rd_or_close_wakes_a_thread_blocked_reading_the_stream(
    pair: Pair, how: str
) -> None:
    """As on a socket, shutdown(SHUT_RD) (or close()) in one thread ends a recv()
    blocked on the stream in another, at once: it does not wait for the peer to answer
    the STOP_SENDING (reset the stream), which a peer may never do."""
    stream, _ = _lent_stream(pair)
    stream.settimeout(None)
    call = Call(lambda: stream.recv(100))
    assert pair.client is not None
    engine = pair.client._engine
    assert wait_for(lambda: engine.pumping)
    with pair.peer._engine.lock:  # the peer answers nothing meanwhile
        if how == "shutdown":
            stream.shutdown(dtp.socket.SHUT_RD)
        else:
            stream.close()
        assert call.join(5)
    if how == "shutdown":
        assert call.error is None and call.result == b""
    else:  # closed under it: b"", or the closed socket's error
        assert call.result == b"" or isinstance(call.error, LocalProtocolError), call.error
    stream.close()


def test_shutdown_rd_of_the_first_stream_gives_a_blocked_reader_end_of_stream(
    pair: Pair,
) -> None:
    """The reader got StreamReset (the peer's answer to our STOP_SENDING) instead."""
    assert pair.client is not None
    client = pair.client
    client.settimeout(None)
    call = Call(lambda: client.recv(100))
    assert wait_for(lambda: client._engine.pumping)
    client.shutdown(dtp.socket.SHUT_RD)
    assert call.join(5)
    assert call.error is None and call.result == b""
    # the peer's reset, once it comes, changes nothing
    pair.peer.sendall(b"late")
    assert client.recv(100) == b""


WINDOW = 64 << 10


@contextlib.contextmanager
def _two_window_pair() -> Iterator[Pair]:
    """A pair whose connection window is two streams' windows (WINDOW each), both
    ends with a 5 s timeout."""
    config = ConnectionConfig(
        identity=SERVER_ID, is_client=False, stream_window=WINDOW, connection_window=2 * WINDOW
    )
    p = Pair(config)
    try:
        assert p.client is not None
        p.client.settimeout(5)
        p.peer.settimeout(5)
        yield p
    finally:
        p.close()


def _fill_a_stream_window(p: Pair) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
    """A new stream and the server's end of it, which reads its first byte; the rest of
    its window is then sent, to be read by nobody."""
    assert p.client is not None
    stream = p.client.open_stream()
    stream.sendall(b"x")
    peer = p.peer.accept_stream()
    assert peer.recv(1) == b"x"
    stream.sendall(b"y" * (WINDOW - 1))  # the rest of its window: read by nobody
    return stream, peer


def _assert_a_third_stream_is_not_stalled(p: Pair) -> None:
    """A third stream carries four windows' worth to the server, and an answer back."""
    assert p.client is not None
    third = p.client.open_stream()
    third.settimeout(5)

    def send() -> bytes:
        third.sendall(b"z" * (4 * WINDOW))
        # what sendall() queued goes out as credit comes back while a thread waits
        # on the connection (else at the timer's next look, a second at most)
        return third.recv(1)

    sender = Call(send)
    peer = p.peer.accept_stream()
    got = 0
    while got < 4 * WINDOW:
        chunk = peer.recv(WINDOW)
        assert chunk
        got += len(chunk)
    peer.sendall(b"!")
    assert sender.join(5) and sender.error is None and sender.result == b"!"
    peer.close()


@pytest.mark.parametrize("how", ["shutdown", "close"])
def test_bytes_a_stream_leaves_unread_give_the_connection_its_credit_back(how: str) -> None:
    """Streams shut (SHUT_RD) or closed with bytes unread: those bytes, and those that
    come before the peer stops, do not count against the connection's window: two such
    streams here leave the other streams room to go on."""
    with _two_window_pair() as p:
        for _ in range(2):
            _stream, peer = _fill_a_stream_window(p)  # (our end kept until the next)
            if how == "shutdown":
                peer.shutdown(dtp.socket.SHUT_RD)
            else:
                peer.close()
        _assert_a_third_stream_is_not_stalled(p)


def test_closed_streams_leave_no_buffers_behind(pair: Pair) -> None:
    """A connection that carries many short streams: each closed stream's receive
    buffer goes once the connection is done with it. One stayed per stream, for the
    connection's life, on both sides."""
    client = pair.client
    assert client is not None
    client.settimeout(5)
    pair.peer.settimeout(5)
    for _ in range(50):
        stream = client.open_stream()
        stream.sendall(b"request")
        stream.shutdown(dtp.socket.SHUT_WR)
        peer = pair.peer.accept_stream()
        assert peer.recv(100) == b"request"
        assert peer.recv(100) == b""
        peer.sendall(b"reply")
        peer.close()
        assert stream.recv(100) == b"reply"
        assert stream.recv(100) == b""
        stream.close()
    for end in (client, pair.peer):
        streams = end._engine.session.streams
        assert len([sid for sid in streams if sid != 0]) <= 1, sorted(streams)


def test_a_reader_of_a_stream_closed_under_it_ends_after_its_buffer_went(pair: Pair) -> None:
    """close() in one thread while another waits in recv() on the stream: the waiter
    ends (b"" or the closed socket's error) even when the stream's buffer is gone by
    the time it looks."""
    for _ in range(20):
        stream, peer = _lent_stream(pair)
        peer.close()  # the connection forgets the stream once our side ends too
        stream.settimeout(None)
        call = Call(lambda s=stream: s.recv(100))
        assert Call(stream.close).join(5)
        assert call.join(5)
        assert call.result == b"" or isinstance(call.error, LocalProtocolError), call.error


@pytest.mark.parametrize("how", ["close", "shutdown"])
def test_closing_a_stream_the_peer_closed_first_returns_at_once(pair: Pair, how: str) -> None:
    """The peer closed its end (its FIN, and STOP_SENDING for ours) and we read to the
    end: the connection is done with the stream. Our close() or shutdown(SHUT_WR) then
    waited, with no timeout for good, for the stream to exist before sending its end."""
    stream, peer = _lent_stream(pair)
    peer.close()
    stream.settimeout(None)
    assert stream.recv(100) == b""
    call = Call(stream.close if how == "close" else lambda: stream.shutdown(dtp.socket.SHUT_WR))
    assert call.join(5)
    assert call.error is None
    stream.close()


@pytest.mark.parametrize(
    ("which", "how"), [("first", "shutdown"), ("second", "shutdown"), ("second", "close")]
)
def test_shutdown_wr_or_close_fails_a_thread_blocked_sending(
    pair: Pair, which: str, how: str
) -> None:
    """As a socket's send() fails with EPIPE once another thread shuts it for writing,
    a sendall() blocked on a peer that reads nothing ends when another thread calls
    shutdown(SHUT_WR) or close() (of a second stream: closing the first closes the
    connection), rather than wait on for credit that never comes."""
    if which == "first":
        assert pair.client is not None
        stream = pair.client
    else:
        stream, _ = _lent_stream(pair)
    stream.settimeout(None)
    call = Call(lambda: stream.sendall(b"x" * (64 << 20)))  # beyond every window
    engine = stream._engine
    sid = stream.stream_id
    # blocked: out of credit, with as much queued as a stream may have
    assert wait_for(
        lambda: engine.pumping and engine.conn.send_buffered(sid) >= dtp.socket.SEND_HIGH_WATER
    )
    if how == "shutdown":
        closer = Call(lambda: stream.shutdown(dtp.socket.SHUT_WR))
    else:
        closer = Call(stream.close)
    assert closer.join(5) and closer.error is None
    assert call.join(5)
    assert isinstance(call.error, LocalProtocolError), call.error


def test_sendall_timeout_bounds_the_whole_call(pair: Pair) -> None:
    """socket.sendall's timeout is the most the whole call takes (Python 3.5+), not a
    limit on each wait: a peer that reads, but slowly, does not stretch a sendall()
    with a 0.5 s timeout to as long as the data takes (here about 20 s)."""
    stop = threading.Event()
    peer = pair.peer
    peer.settimeout(5)

    def read_slowly() -> None:
        while not stop.is_set() and peer.recv(65536):
            stop.wait(0.02)  # (pacing: about 3 MB/s)

    reader = Call(read_slowly)
    assert pair.client is not None
    client = pair.client
    client.settimeout(0.5)
    call = Call(lambda: client.sendall(b"x" * (64 << 20)))
    try:
        assert call.join(5)
        assert isinstance(call.error, DTPTimeoutError), call.error
    finally:
        stop.set()
        client.abort()
        reader.join(5)


def test_close_loses_nothing_a_slow_reader_has_still_to_read(pair: Pair) -> None:
    """close() with data still on its way to a peer that reads it slowly: the peer
    reads every byte, then the end. The carrier was closed 20 ms after the peer went
    quiet; the credit the peer sent as it read on then met a closed socket, whose
    reset destroyed what the peer's TCP had not handed over yet (ConnectionLost there,
    half the data gone)."""
    assert pair.client is not None
    client = pair.client
    stream = client.open_stream()
    stream.settimeout(0)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while True:  # as much as flow control and the carrier take
            sent += stream.send(b"z" * (1 << 20))
    assert sent > 2 << 20
    peer_stream = pair.peer.accept_stream()
    peer_stream.settimeout(5)

    def read_slowly() -> int:
        got = 0
        with contextlib.suppress(ConnectionClosed):  # (the end, after the data)
            while chunk := peer_stream.recv(1 << 20):
                got += len(chunk)
                threading.Event().wait(0.01)  # (pacing: a slow reader)
        pair.peer.close()
        return got

    reader = Call(read_slowly)
    closer = Call(client.close)
    assert reader.join(5)
    assert reader.error is None, reader.error
    assert reader.result == sent
    assert closer.join(5) and closer.error is None


def test_streams_dropped_unclosed_give_the_connection_its_credit_back() -> None:
    """Stream sockets garbage-collected unclosed (as a socket.socket is closed then):
    the connection closes their streams at its next I/O, and their unread bytes no
    longer count against its window. They held it for good: two such streams here
    stalled every other stream."""
    with _two_window_pair() as p:
        for _ in range(2):
            _stream, peer = _fill_a_stream_window(p)  # (our end kept until the next)
            del peer
            gc.collect()
        _assert_a_third_stream_is_not_stalled(p)


def test_close_whose_linger_runs_out_is_no_clean_end_for_the_peer() -> None:
    # the peer does not read, so most of what we sent waits behind its stream window;
    # close() gives up after its linger, and the peer must then read an error after
    # the bytes that came, not the clean end of a stream cut short
    config = ConnectionConfig(identity=SERVER_ID, is_client=False, stream_window=64 * 1024)
    p = Pair(config)
    try:
        assert p.client is not None
        p.client._engine.linger = 0.3
        p.client.settimeout(5)
        sent = 400_000
        p.client.sendall(b"x" * sent)  # returns with what the window holds back queued
        assert p.client._engine.conn.send_buffered() > 0
        p.client.close()
        p.client = None
        p.peer.settimeout(10)
        got = 0
        with pytest.raises(ConnectionClosed, match="before all that was written was sent"):
            while data := p.peer.recv(1 << 20):
                got += len(data)
        assert 0 < got < sent
    finally:
        p.close()
