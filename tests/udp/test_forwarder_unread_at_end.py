"""A blocking UdpForwarder's flow that ends asks its relay for the final report and
waits for it; its reply thread has stopped reading by then, so replies that come
meanwhile pile up in the connection, which keeps the newest 1024 and drops the others.
Those drops are counted in ``UdpStats.dropped_unread`` once each, as the ones the reply
thread saw are: every datagram the connection dropped is in the forwarder's counters.
Real connections on 127.0.0.1."""

from __future__ import annotations

import socket
import threading

import dtp.socket
from dtp.hostid.udp import UdpForwarder
from dtp.hostid.udp._engine import control_frame
from tests.support.polling import wait_for
from tests.udp.world import SERVER, meter

FINAL_REQUEST = control_frame(b"F")


def _session_threads(before: set[threading.Thread]) -> int:
    """The reply threads of flows begun since ``before`` still running."""
    return sum(t.name == "dtp-udp-session" for t in set(threading.enumerate()) - before)


def test_replies_dropped_while_the_final_report_is_awaited_are_counted() -> None:
    relayed: list[dtp.socket.DTPSocket] = []
    asked, done = threading.Event(), threading.Event()

    def relay(sock: dtp.socket.DTPSocket) -> None:
        # reads stream 0 up to the final request, and never answers it
        relayed.append(sock)
        seen = b""
        while FINAL_REQUEST not in seen:
            chunk = sock.recv(64)
            if not chunk:
                return
            seen += chunk
        asked.set()
        done.wait(30)
        sock.close()

    connected: list[dtp.socket.DTPSocket] = []

    def connect() -> dtp.socket.DTPSocket:
        sock = dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        )
        connected.append(sock)
        return sock

    before = set(threading.enumerate())
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        threading.Thread(target=server.serve_forever, args=(relay,), daemon=True).start()
        fwd = UdpForwarder(
            ("127.0.0.1", 0), connect, meter_for=lambda sock: meter(), final_timeout=30
        )
        closing = threading.Thread(target=fwd.close, daemon=True)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"hello", fwd.address)
                assert wait_for(lambda: fwd.stats.sessions_opened == 1)
            closing.start()  # (it waits for the final report)
            assert asked.wait(10)
            # the flow's reply thread has stopped: what comes now is read by no one
            assert wait_for(lambda: _session_threads(before) == 0)
            for i in range(3000):
                relayed[0].send_datagrams([i.to_bytes(4, "big")])
            assert wait_for(lambda: connected[0].datagrams_dropped > 0)
        finally:
            done.set()
            closing.join(30)
    assert not closing.is_alive()
    dropped = connected[0].datagrams_dropped
    assert dropped > 0
    assert fwd.stats.dropped_unread == dropped
    assert fwd.stats.sessions_closed == 1
