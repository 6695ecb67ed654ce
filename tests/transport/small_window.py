"""A blocking server's identity and small stream window (its clients' sendall() returns with
most bytes held back by flow control), its clients, and a thread's CPU time, for the tests
of queued output and of the timer thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig

SERVER_ID = HostIdentity.generate()
WINDOW = 64 << 10


def connect_client(server: dtp.socket.DTPServer) -> dtp.socket.DTPSocket:
    """A client connected to ``server`` (10 s timeout)."""
    return dtp.socket.create_connection(
        server.address, timeout=10, server_key=server.noise_public_key
    )


@contextmanager
def window_pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """A client and the server's socket for it, the server granting a connection window
    of WINDOW (smaller than a stream's: the connection's credit binds); both with a
    30 s timeout."""
    config = ConnectionConfig(identity=SERVER_ID, is_client=False, connection_window=WINDOW)
    with (
        dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, config=config) as srv,
        connect_client(srv) as client,
    ):
        server, _ = srv.accept(timeout=10)
        with server:
            server.settimeout(30)
            client.settimeout(30)
            yield client, server


def accept_both(
    server: dtp.socket.DTPServer, first: dtp.socket.DTPSocket, second: dtp.socket.DTPSocket
) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
    """The server's sockets for ``first`` and ``second`` (connected before): the server
    runs handshakes side by side, so accept() may return the second one first (a
    loaded CI run did, and the test waited 60 s for bytes from the wrong client)."""
    a, _ = server.accept(timeout=10)
    b, _ = server.accept(timeout=10)
    if a._engine.sock.getpeername() != first._engine.sock.getsockname():
        a, b = b, a
    assert a._engine.sock.getpeername() == first._engine.sock.getsockname()
    assert b._engine.sock.getpeername() == second._engine.sock.getsockname()
    return a, b


def thread_cpu_seconds(thread: threading.Thread) -> float:
    """The CPU time ``thread`` has used so far (Linux: /proc/self/task/<tid>/stat)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / float(__import__("os").sysconf("SC_CLK_TCK"))
