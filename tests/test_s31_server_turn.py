"""Out of threads, a blocking server's accepting is not held by one long handler.

The thread that accepts a connection passes the accepting on to another thread and
serves the connection. When no thread could be started for the turn, it kept the turn
and accepted again only after serving its connection -- under serve_forever, after the
handler's whole run: one long handler stopped all accepting. Now the turn goes to the
first thread free (any whose connection ends sooner). And serve_forever's own hand-off
of a connection queued before it ran, out of threads, ended serve_forever with the
RuntimeError and the socket left open; now that client reads "server busy" and
serve_forever goes on. Both tests failed on the old code."""

from __future__ import annotations

import threading

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed
from tests.polling import wait_for
from tests.test_socket_server_threads import CLIENT, SERVER, echo_once

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
            assert wait_for(lambda: server._ready.qsize() == 1, BOUND)
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
