"""DTPServer's connection threads: the one that accepts a connection whose first record
came with it, or soon after it, serves it and passes the accepting on (else an idle thread
serves it once the record is in), one per concurrent connection, reused across
connections, ended by close() and (all but the one accepting) after WORKER_IDLE without
work.

Out of threads, a blocking server's accepting is not held by one long handler.

The thread that accepts a connection passes the accepting on to another thread and
serves the connection. When no thread can be started for the turn, the turn goes to
the first thread free (any whose connection ends sooner), so one long handler does not
stop all accepting. And out of threads, serve_forever's own hand-off of a connection
queued before it ran tells that client "server busy" and goes on serving."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed, HandshakeError
from dtp.identity.keys import HostIdentity
from tests.support.leaks import resource_warnings
from tests.support.polling import wait_for

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()


def connection_threads(before: set[threading.Thread] | None = None) -> list[threading.Thread]:
    """Live connection threads (those not in ``before``: other tests' servers')."""
    return [
        t for t in threading.enumerate() if t.name == "dtp-handshake" and t not in (before or set())
    ]


def existing() -> set[threading.Thread]:
    # the Thread objects, not their idents: an ident is reused once its thread ended
    return set(connection_threads())


def echo_once(server: dtp.socket.DTPServer, data: bytes) -> bytes:
    with dtp.socket.create_connection(
        server.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
    ) as sock:
        sock.sendall(data)
        return sock.recv(100)


def test_serve_forever_reuses_the_thread_of_a_finished_connection() -> None:
    served: list[int] = []

    def handler(sock: dtp.socket.DTPSocket) -> None:
        served.append(threading.get_ident())
        sock.sendall(sock.recv(100))

    before = existing()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        server.WORKER_IDLE = 30.0
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        for i in range(6):
            assert echo_once(server, b"ping %d" % i) == b"ping %d" % i
            # the thread is free again once the handler returned and closed the socket;
            # the other one waits in accept()
            assert wait_for(lambda: server._idle == 1)
        assert len(served) == 6
        # two threads take turns: each serves what it accepted (or the idle one serves
        # a connection whose first record came after its accept), then waits for the
        # next turn; no thread was started after the first connection. (Which of them
        # takes a turn is up to the job queue and to when the records come.)
        assert 1 <= len(set(served)) <= 2
        assert len(connection_threads(before)) == 2
    # close() ends waiting threads at once, not after WORKER_IDLE, and the accepting one
    assert wait_for(lambda: not connection_threads(before), timeout=5.0)


def test_close_stops_listening_at_once() -> None:
    before = existing()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    address = server.address
    assert wait_for(lambda: len(connection_threads(before)) == 1)  # the one accepting
    server.close()
    assert wait_for(lambda: not connection_threads(before), timeout=5.0)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(address, timeout=5):
        pass


def test_concurrent_connections_each_get_a_thread() -> None:
    inside = threading.Barrier(3, timeout=10)
    served: list[int] = []

    def handler(sock: dtp.socket.DTPSocket) -> None:
        data = sock.recv(100)
        served.append(threading.get_ident())
        inside.wait()  # all three handlers run at once, or this times out
        sock.sendall(data)

    replies: list[bytes] = []
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        clients = [
            threading.Thread(target=lambda i=i: replies.append(echo_once(server, b"c%d" % i)))
            for i in range(3)
        ]
        for t in clients:
            t.start()
        for t in clients:
            t.join(20)
        assert sorted(replies) == [b"c0", b"c1", b"c2"]
        assert len(set(served)) == 3
        assert not inside.broken


def test_idle_threads_end_after_worker_idle_and_new_ones_start() -> None:
    def handler(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    before = existing()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        server.WORKER_IDLE = 0.2
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        assert echo_once(server, b"first") == b"first"
        # the thread that served it ended; the one accepting stays
        assert wait_for(lambda: len(connection_threads(before)) == 1 and server._idle == 0, 5.0)
        assert echo_once(server, b"second") == b"second"  # a fresh thread accepts next
        assert wait_for(lambda: len(connection_threads(before)) == 1 and server._idle == 0, 5.0)


def test_accept_mode_threads_are_reused_too() -> None:
    before = existing()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        server.WORKER_IDLE = 30.0
        for i in range(3):
            result: list[bytes] = []

            def client(i: int = i, result: list[bytes] = result) -> None:
                result.append(echo_once(server, b"a%d" % i))

            t = threading.Thread(target=client)
            t.start()
            sock, address = server.accept(timeout=10)
            with sock:
                assert address == CLIENT.sui_address
                sock.sendall(sock.recv(100))
            t.join(10)
            assert result == [b"a%d" % i]
            assert wait_for(lambda: server._idle == 1)
        assert len(connection_threads(before)) == 2  # one accepting, one waiting


def test_a_thread_that_cannot_be_started_does_not_stop_the_accepting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of threads (Thread.start raises RuntimeError, as it does when the process may
    start no more), the thread that accepted a connection cannot pass the accepting on:
    it keeps the turn and accepts again once it served that connection, so later
    clients still connect and nothing leaks (its handshake slot is free again). A
    connection whose first record came after its accept, which a new thread would have
    served, is closed at once (HandshakeError at its client), never left hanging."""

    def handler(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    real_start = threading.Thread.start
    refused: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name == "dtp-handshake" and refusing.is_set():
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    refusing = threading.Event()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        server.WORKER_IDLE = 30.0
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        assert wait_for(lambda: len(connection_threads()) >= 1)
        monkeypatch.setattr(threading.Thread, "start", start)
        refusing.set()
        for i in range(4):
            with contextlib.suppress(HandshakeError):  # (no thread for it: closed at once)
                assert echo_once(server, b"n%d" % i) == b"n%d" % i
        assert refused  # a thread was asked for, and could not start
        refusing.clear()
        assert echo_once(server, b"after") == b"after"
        assert wait_for(lambda: server.handshakes_in_progress == 0)


def test_a_ledger_connection_without_a_thread_is_closed_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A carrier handed over by the ledger listener when no thread can be started is
    closed (the client sees its connection end), and its handshake slot is free."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        # an idle worker would take the job without a new thread: none may be idle
        assert wait_for(lambda: server._idle == 0)

        def start(self: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        ours, theirs = socket.socketpair()
        with ours, theirs:
            monkeypatch.setattr(threading.Thread, "start", start)
            handed = server.handoff(ours, ("ledger", "0xabc"), server._config)
            monkeypatch.undo()
            assert handed is False
            theirs.settimeout(5)
            assert theirs.recv(1) == b""  # closed on our side
        assert server.handshakes_in_progress == 0


def test_close_ends_connections_that_accept_never_took() -> None:
    """A connection whose handshake completed while nobody called accept() is closed
    with the server -- the client is told, and no socket is left open -- while one that
    accept() handed out stays open."""
    from dtp.errors import ConnectionClosed

    def run() -> None:
        srv = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
        taken_client = dtp.socket.create_connection(
            srv.address, server_key=SERVER.noise_public, timeout=10
        )
        taken, _ = srv.accept(timeout=10)
        queued = dtp.socket.create_connection(
            srv.address, server_key=SERVER.noise_public, timeout=10
        )
        srv.close()
        with pytest.raises(ConnectionClosed, match="the server is closed"):
            queued.recv(10)
        queued.close()
        # the connection accept() handed out is the application's: still open
        taken_client.sendall(b"still")
        assert taken.recv(10) == b"still"
        taken.close()
        taken_client.close()

    assert resource_warnings(run) == []


BOUND = 20.0


def _connect(server: dtp.socket.DTPServer, timeout: float = BOUND) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        server.address, timeout=timeout, server_key=server.noise_public_key, identity=CLIENT
    )


def test_a_long_handler_does_not_hold_the_accepting_when_no_thread_can_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_go = threading.Event()  # ends the first (slow) connection's handler
    release = threading.Event()  # ends the held one's

    def handler(sock: dtp.socket.DTPSocket) -> None:
        data = sock.recv(100)
        if data == b"slow":
            slow_go.wait(BOUND)
        elif data == b"hold":
            release.wait(BOUND * 3)
        sock.sendall(data)

    real_start = threading.Thread.start
    refusing = threading.Event()
    refused: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name == "dtp-handshake" and refusing.is_set():
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        server.WORKER_IDLE = 60.0
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        slow = _connect(server)
        held = None
        try:
            slow.sendall(b"slow")  # one thread serves it (the turn went to a new one)
            assert wait_for(lambda: server._idle == 0)
            refusing.set()
            # the accepting thread takes this one and cannot pass the turn on: it
            # serves the held connection, whose handler waits
            held = _connect(server)
            held.sendall(b"hold")
            assert wait_for(lambda: bool(refused), BOUND)
            got: list[bytes] = []
            late = threading.Thread(target=lambda: got.append(echo_once(server, b"late")))
            late.start()
            # the slow connection ends: its thread takes the turn and serves the late
            # client, while the held handler still runs
            slow_go.set()
            assert slow.recv(100) == b"slow"
            late.join(BOUND)
            assert got == [b"late"]
            assert not release.is_set()
        finally:
            release.set()
            slow.close()
            if held is not None:
                held.close()
        refusing.clear()
        assert echo_once(server, b"after") == b"after"


def test_serve_forever_out_of_threads_refuses_a_queued_connection_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def handler(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    real_start = threading.Thread.start
    refusing = threading.Event()

    def start(self: threading.Thread) -> None:
        # (serve_forever's handler threads are named after their target, run)
        if "(run)" in self.name and refusing.is_set():
            raise RuntimeError("can't start new thread")
        real_start(self)

    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        # handshaken before serve_forever runs: it waits for accept(), which
        # serve_forever's loop does, handing it to a thread of its own
        queued = _connect(server)
        try:
            assert wait_for(lambda: len(server._queue) == 1, BOUND)
            monkeypatch.setattr(threading.Thread, "start", start)
            refusing.set()
            serving = threading.Thread(
                target=server.serve_forever, args=(handler,), name="serving", daemon=True
            )
            serving.start()
            with pytest.raises(ConnectionClosed, match="server busy"):
                queued.sendall(b"x")
                queued.recv(100)
            assert serving.is_alive()
            refusing.clear()
            assert echo_once(server, b"next") == b"next"
            assert serving.is_alive()
        finally:
            queued.close()


class _LateRelay:
    """A TCP relay to ``target`` that connects on at once but holds what its client
    sends for ``hold`` seconds: the server sees a connect whose first record comes
    after it (as a connection by host ID's does, its ledger's work in between)."""

    def __init__(self, target: tuple[str, int], hold: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.target, self.hold = target, hold
        threading.Thread(target=self._relay, daemon=True).start()

    def _relay(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        threading.Event().wait(self.hold)

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        back.start()
        pipe(client, upstream)
        back.join(10)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def test_a_record_that_comes_after_the_connect_is_read_by_the_accepting_thread() -> None:
    """The accepting thread watches the newest connection whose first record had not
    come with its connect, beside the listener, and serves it itself once the record
    is in: no hand-off to the reader thread. The one it watched before goes to the
    reader thread as the next connects, and is still closed at its first-message
    timeout."""

    def handler(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100))

    with dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, first_message_timeout=1.0
    ) as server:
        watched: list[object] = []
        watch = server._watch

        def spy(arrival: object) -> None:
            watched.append(arrival)
            watch(arrival)  # type: ignore[arg-type]

        server._watch = spy  # type: ignore[method-assign]
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        relay = _LateRelay(server.address, 0.3)
        try:
            with dtp.socket.create_connection(
                relay.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
            ) as sock:
                sock.sendall(b"late")
                assert sock.recv(100) == b"late"
        finally:
            relay.close()
        assert watched == []
        # a silent connect, then a late one: the silent one goes to the reader thread
        silent = socket.create_connection(server.address)
        assert wait_for(lambda: server._admission.unproven.from_address("127.0.0.1") == 1)
        relay = _LateRelay(server.address, 0.3)
        try:
            with dtp.socket.create_connection(
                relay.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
            ) as sock:
                sock.sendall(b"later")
                assert sock.recv(100) == b"later"
        finally:
            relay.close()
        assert len(watched) == 1
        with silent:
            silent.settimeout(5.0)
            assert silent.recv(1) == b""  # closed at its first-message timeout
        assert server.unproven_closed >= 1


def test_the_silent_connection_the_accepting_thread_watches_closes_at_its_timeout() -> None:
    """The newest silent connection, which the accepting thread watches beside the
    listener, is closed at its first-message timeout, not at the end of the accepting
    thread's wait: a descriptor the reader thread closes while a poll waits on it stays
    open until that poll ends (up to half a second later)."""
    with dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, first_message_timeout=0.1
    ) as server:
        with socket.create_connection(server.address) as silent:
            silent.settimeout(5.0)
            start = time.monotonic()
            assert silent.recv(1) == b""
            took = time.monotonic() - start
        assert took < 0.4  # (0.1, and the reader thread's wake-up)
        assert server.unproven_closed == 1
