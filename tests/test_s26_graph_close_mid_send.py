"""A live sync session whose connection ends cleanly while its writer is in a send (a
GraphServer that closes as the session sends its part of the exchange) returns as a
session whose peer left: the clean close is no failure. The writer took the
ConnectionClosed for one, and a reader that came back to its loop's top before the
end of the stream raised it (seen once in CI, under load:
test_s23_graph_server_close's with-block test). Driven here by a stream double that
orders the two threads so: the server's side is a real SyncSession."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from dtp.errors import ConnectionClosed
from dtp.graph import Graph, SyncSession, sync_blocking


class _ClosingStream:
    """A stream to ``server`` (a real session) whose connection ends cleanly during the
    client's second send (ConnectionClosed, code 0). The reads bring the server's
    bytes as it makes them; once the send has failed, one more read brings a byte (the
    start of a message that never completes, as a close cuts one), which sends the
    reader back to its loop's top; then the end."""

    def __init__(self, server: SyncSession) -> None:
        self.server = server
        self.sends = 0
        self.closed_in_send = threading.Event()
        self.lock = threading.Lock()
        self.pending = server.data_to_send()  # its HELLO
        self.answered = threading.Event()
        self.tail = [b"\x00"]

    def sendall(self, data: Any) -> None:
        with self.lock:
            self.sends += 1
            if self.sends == 1:
                self.server.receive_data(bytes(data))
                self.pending += self.server.data_to_send()
                self.answered.set()
                return
        self.closed_in_send.set()
        raise ConnectionClosed("the connection is closed")

    def recv_into(self, buf: Any) -> int:
        with self.lock:
            data, self.pending = self.pending, b""
        if not data and self.answered.wait(10):
            with self.lock:
                data, self.pending = self.pending, b""
        if not data:
            assert self.closed_in_send.wait(10)
            data = self.tail.pop() if self.tail else b""
        buf[: len(data)] = data
        return len(data)

    def abort(self, reason: str = "") -> None:
        pass


def test_a_clean_close_during_a_send_ends_a_live_session_without_error(tmp_path: Path) -> None:
    served = Graph(tmp_path / "served.db")
    peer = Graph(tmp_path / "peer.db")
    served.put("s", {"v": 1})
    peer.put("p", {"v": 2})
    server = SyncSession(served, live=True)
    server.start()
    stream = _ClosingStream(server)
    try:
        session = sync_blocking(peer, stream)
        assert isinstance(session, SyncSession)
        assert stream.closed_in_send.is_set()  # the close came during a send
    finally:
        server.close()
        served.close()
        peer.close()
