"""Keepalives follow the peer's idle timeout (its ``it`` transport parameter).

A side PINGs after ``keepalive_interval`` (15 s) without sending anything; the peer's
idle timeout counts only what it receives. A peer with an idle timeout under 15 s (the
daemon's ``connection_idle_timeout``, say) gave up on a quiet connection -- or on one it
only sent on, whose other end answered nothing -- although both ends were alive: the
``it`` parameter each side sends was ignored.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import replace

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.protocol._events import PeerAuthenticated
from dtp.protocol.connection import MIN_KEEPALIVE, Connection, ConnectionConfig
from dtp.transport.carriers._memory import MemoryLink
from tests.support.pairs import connect, make_pair

CLIENT_ID = HostIdentity.generate()
SERVER_ID = HostIdentity.generate()


def pair(client: dict[str, object], server: dict[str, object]) -> MemoryLink:
    """An IK client and server with these config overrides, established, on a link whose
    clock moves from timer to timer."""
    client_cfg = ConnectionConfig(
        identity=CLIENT_ID, is_client=True, server_static=SERVER_ID.noise_public
    )
    server_cfg = ConnectionConfig(identity=SERVER_ID, is_client=False)
    c = Connection(replace(client_cfg, **client), ephemeral_key=os.urandom(32), now=0.0)  # type: ignore[arg-type]
    s = Connection(replace(server_cfg, **server), ephemeral_key=os.urandom(32), now=0.0)  # type: ignore[arg-type]
    link = MemoryLink(c, s)

    def step() -> None:
        while c.next_event() is not None:
            pass
        authenticated = False
        while (event := s.next_event()) is not None:
            authenticated = authenticated or isinstance(event, PeerAuthenticated)
        if authenticated and not s.established and not s.closed:
            s.accept()

    assert link.run(lambda: c.established and s.established, on_round=step)
    return link


def test_a_quiet_connection_outlives_a_peer_idle_timeout_under_the_keepalive() -> None:
    """The client gives up after 4 s of silence; the server keeps its default 15 s
    keepalive. Ten simulated minutes later both are open: the server PINGs every 2 s
    (half the client's 4 s). Before: the client timed out at 4 s."""
    link = pair({"idle_timeout": 4.0}, {})
    c, s = link.a, link.b
    link.run(lambda: link.now > 600 or c.closed or s.closed, max_time=10_000)
    assert c.established and s.established, c.termination
    assert link.now > 600


def test_a_connection_one_side_only_sends_on_stays_up() -> None:
    """The server streams to the client for a simulated minute, a few bytes every 3 s
    or more;
    the client (idle timeout 5 s on the server) sends nothing of its own -- its window
    is far from used up, so no credit goes back. Before: the server, hearing nothing,
    timed out the client it was sending to."""
    link = pair({}, {"idle_timeout": 5.0})
    c, s = link.a, link.b
    sid = 0
    sent = 0
    while link.now < 60:
        s.send_stream_data(sid, b"tick")
        sent += 1
        deadline = link.now + 3.0
        link.run(lambda: link.now >= deadline or c.closed or s.closed, max_time=30)  # noqa: B023
        assert c.established and s.established, s.termination
    got = bytearray()
    while (event := c.next_event()) is not None:
        data = getattr(event, "data", None)
        if isinstance(data, bytes | bytearray):
            got += data
    assert sent >= 10 and got.count(b"tick") == sent


def test_the_interval_never_goes_under_the_floor() -> None:
    """A peer whose idle timeout is tiny (here 0.1 s) does not get a PING every 50 ms
    from us: MIN_KEEPALIVE is the floor; our own shorter setting stays ours."""
    link = pair({"idle_timeout": 0.1}, {})
    assert link.b._keepalive == MIN_KEEPALIVE
    link = pair({"idle_timeout": 0.1}, {"keepalive_interval": 0.25})
    assert link.b._keepalive == 0.25
    link = pair({"idle_timeout": 0.1}, {"keepalive_interval": None})
    assert link.b._keepalive is None  # switched off stays off


def test_over_real_sockets_a_quiet_connection_survives_a_short_idle_timeout() -> None:
    """The same over 127.0.0.1: a client with a 2.5 s idle timeout, a default server, 8
    s of silence, then an echo. Before: the client's connection ended at 2.5 s."""
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    done = threading.Event()

    def handle(sock: dtp.socket.DTPSocket) -> None:
        with sock:
            data = sock.recv(100)
            sock.sendall(data)
            done.wait(30)

    serving = threading.Thread(target=server.serve_forever, args=(handle,), daemon=True)
    serving.start()
    try:
        with dtp.socket.create_connection(
            server.address,
            server_key=SERVER_ID.noise_public,
            timeout=30,
            config=ConnectionConfig(identity=CLIENT_ID, is_client=True, idle_timeout=2.5),
        ) as sock:
            time.sleep(8)
            sock.sendall(b"still there?")
            assert sock.recv(100) == b"still there?"
    finally:
        done.set()
        server.close()
        serving.join(30)


ID = HostIdentity.generate()


@pytest.mark.parametrize("bad", [-1.0, 0, 0.0, math.nan, math.inf])
def test_a_bad_keepalive_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="keepalive_interval"):
        ConnectionConfig(identity=ID, is_client=True, keepalive_interval=bad)


@pytest.mark.parametrize("bad", ["15", True])
def test_a_keepalive_interval_of_the_wrong_type_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="keepalive_interval"):
        ConnectionConfig(identity=ID, is_client=True, keepalive_interval=bad)  # type: ignore[arg-type]


def test_good_keepalive_intervals_are_taken() -> None:
    for good in (None, 0.25, 15, 3600.0):
        assert ConnectionConfig(identity=ID, is_client=True, keepalive_interval=good)


@pytest.mark.parametrize("reliable", [True, False])
def test_steady_timer_is_get_timer_exactly_while_timer_steady_holds(reliable: bool) -> None:
    # (a driver's flush asks steady_timer() for both answers at once)
    client, server = make_pair(reliable_carrier=reliable)
    seen = []
    for conn in (client, server):  # before the handshake
        assert not conn.timer_steady() and conn.steady_timer() is None
    c, s, link = connect(reliable_carrier=reliable)
    for side in (c, s):
        conn = side.conn
        conn.data_to_send(link.now + 3.0)  # (the keepalive's start moves)
        seen.append(conn.timer_steady())
        assert conn.steady_timer() == (conn.get_timer() if conn.timer_steady() else None)
        conn.close()
        assert not conn.timer_steady() and conn.steady_timer() is None
    assert seen == [reliable, reliable]
