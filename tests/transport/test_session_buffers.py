"""Session.forget in linear time: a call must not look again at every stream closed
earlier that the connection is not done with (closing N such streams would cost O(N**2)).
Driven in memory with real Connections and virtual clocks; the work is counted (the
membership checks on the connection's stream table), not timed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dtp.protocol.connection import ConnectionConfig
from dtp.transport._session import Session
from dtp.transport.carriers._memory import MemoryLink
from tests.support.pairs import CLIENT_ID, SERVER_ID

#: Streams the client may open (the server's max_streams): room for the N below.
MAX_STREAMS = 4096


def _session_link() -> tuple[Session, Session, MemoryLink, Callable[[], None]]:
    """Two Sessions wired in memory, established; returns them, the link and the step
    to run it with."""
    client = Session(
        ConnectionConfig(identity=CLIENT_ID, is_client=True, server_static=SERVER_ID.noise_public),
        now=0.0,
    )
    server = Session(
        ConnectionConfig(identity=SERVER_ID, is_client=False, max_streams=MAX_STREAMS),
        now=0.0,
    )
    link = MemoryLink(client.conn, server.conn)

    def step() -> None:
        client.process_events()
        server.process_events()
        if server.authenticated_address and not server.conn.established:
            server.conn.accept()
        while server.incoming_streams:
            server.incoming_streams.popleft()  # (taken: its place in the limit comes back)

    assert link.run(lambda: client.conn.established, on_round=step)
    link.run(None, on_round=step)
    return client, server, link, step


class _CountingStreams(dict[int, Any]):
    """The connection's stream table, counting the membership checks made on it while
    :attr:`counting` is set (forget's look at whether the connection is done with a
    stream)."""

    counting = False
    checks = 0

    def __contains__(self, key: object) -> bool:
        if self.counting:
            self.checks += 1
        return super().__contains__(key)


def _close(session: Session, stream_id: int) -> None:
    """What the adapters' close() does with the receiving side, after the end went out."""
    session.discard(stream_id)
    session.forget(stream_id)


def test_closing_many_streams_the_connection_still_tracks_is_linear() -> None:
    # Each stream's end is queued but not sent (the link is not run): the connection is
    # not done with any of them. Each forget looked at every one closed before it: some
    # N**2 / 2 = 2,001,000 checks for N = 2000 (now at most 3 per call).
    n = 2000
    client, _server, _link, _step = _session_link()
    table = _CountingStreams(client.conn.streams.by_id)
    client.conn.streams.by_id = client.conn._streams = table
    sids = []
    for _ in range(n):
        sid = client.conn.open_stream()
        client.conn.send_stream_data(sid, b"request", end_stream=True)
        sids.append(sid)
        table.counting = True
        try:
            _close(client, sid)
        finally:
            table.counting = False
    checks = table.checks
    assert checks <= 4 * n, f"{checks} checks for {n} streams closed"
    # (unchanged: their buffers stay, discarding what comes, and their reads end)
    for sid in sids:
        assert sid in table
        assert client.streams[sid].discarded
        assert client.readable(sid)
        assert client.take(sid, 100) == b""


def test_buffers_of_closed_streams_go_once_the_connection_is_done_with_them() -> None:
    # (a behaviour kept as it is: the buffers go once the connection is done)
    k = 10
    client, server, link, step = _session_link()
    lingering = []
    for _ in range(k):
        sid = client.conn.open_stream()
        client.conn.send_stream_data(sid, b"request", end_stream=True)
        lingering.append(sid)
    link.run(None, on_round=step)
    for sid in lingering:
        # the server has not ended its side: the connection is not done with them
        _close(client, sid)
    for sid in lingering:
        assert sid in client.conn.streams.by_id
        assert client.streams[sid].discarded
    for sid in lingering:
        server.conn.send_stream_data(sid, b"reply", end_stream=True)
    assert link.run(
        lambda: not any(s in client.conn.streams.by_id for s in lingering), on_round=step
    )
    for sid in lingering:
        assert client.readable(sid)
        assert client.take(sid, 100) == b""

    # More streams close, each one the connection is done with at once: on the way,
    # the buffers of those closed earlier go too.
    short = []
    for _ in range(k):
        sid = client.conn.open_stream()
        client.conn.send_stream_data(sid, b"request", end_stream=True)
        link.run(None, on_round=step)
        server.conn.send_stream_data(sid, b"reply", end_stream=True)
        assert link.run(lambda sid=sid: sid not in client.conn.streams.by_id, on_round=step)
        _close(client, sid)
        short.append(sid)
    left = sorted(sid for sid in client.streams if sid in lingering + short)
    assert left == [], left
    for sid in lingering + short:
        assert client.readable(sid)
        assert client.take(sid, 100) == b""


def _answered(client: Session, server: Session, link: MemoryLink, step: Callable[[], None]) -> int:
    """A stream the client opened with its whole request and the server answered with
    its end: the client read it all, and the connection is done with it."""
    sid = client.conn.open_stream()
    client.conn.send_stream_data(sid, b"request", end_stream=True)
    link.run(None, on_round=step)
    server.conn.send_stream_data(sid, b"reply", end_stream=True)
    assert link.run(lambda: sid not in client.conn.streams.by_id, on_round=step)
    client.process_events()
    client.take_changes()
    assert client.take(sid, 100) == b"reply"
    return sid


def test_a_finished_stream_closed_goes_at_once_as_discard_and_forget_leave_it() -> None:
    client, server, link, step = _session_link()
    fast = _answered(client, server, link, step)
    assert client.drop_finished(fast)
    slow = _answered(client, server, link, step)
    _close(client, slow)
    client.take_changes()
    # the same end: no buffer, reads over, nothing queued for the peer
    for sid in (fast, slow):
        assert sid not in client.streams
        assert client.readable(sid)
        assert client.take(sid, 100) == b""
    assert not client.conn.has_output()


def test_a_stream_not_finished_is_not_dropped() -> None:
    client, server, link, step = _session_link()
    # bytes unread
    sid = client.conn.open_stream()
    client.conn.send_stream_data(sid, b"request", end_stream=True)
    link.run(None, on_round=step)
    server.conn.send_stream_data(sid, b"reply", end_stream=True)
    assert link.run(lambda: sid not in client.conn.streams.by_id, on_round=step)
    client.process_events()
    client.take_changes()
    assert not client.drop_finished(sid)
    assert client.streams[sid].data == b"reply"
    # read, but the connection still tracks it (our end not sent)
    assert client.take(sid, 100) == b"reply"
    other = client.conn.open_stream()
    client.conn.send_stream_data(other, b"request")
    link.run(None, on_round=step)
    server.conn.send_stream_data(other, b"reply", end_stream=True)
    link.run(None, on_round=step)
    client.process_events()
    client.take_changes()
    assert client.take(other, 100) == b"reply"
    assert not client.drop_finished(other)
    assert other in client.streams
    # a change not taken yet (an adapter's wake-ups to come) keeps the general path
    assert client.drop_finished(sid) is True
    third = _answered(client, server, link, step)
    client.discard(other)
    assert not client.drop_finished(third)
    assert third in client.streams
