"""The test "do frames wait for the next record?" is written out six times, each inline
on a hot path: RecordLayer.waiting() (the definition), build()'s early return, the
send path's _can_seal_now(), the lane's _nothing_goes_first(), seal_fast() and the
drivers' Connection.has_output() after a read. Here they are held to agree over every
combination of what may wait, so a field added to one is added to all."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from dtp.native.types import FRAME_CLOSE, FRAME_CONTROL, RawFrame
from dtp.protocol._state import ConnState
from dtp.protocol.connection import Connection
from dtp.protocol.connection._records import RecordLayer
from tests.support.pairs import connect

#: What may wait for the next record, each set as the connection sets it
FIELDS = ("ctrl", "max_data", "stream_credit", "max_streams", "ping", "close")


def _set(conn: Connection, stream_id: int, waiting: tuple[str, ...]) -> None:
    rl = conn.records
    if "ctrl" in waiting:
        rl.ctrl.append(RawFrame(FRAME_CONTROL, 20, 0, 0, b"x"))
    rl.pending_max_data = "max_data" in waiting
    if "stream_credit" in waiting:
        rl._credit_due(stream_id)
    rl.pending_max_streams = "max_streams" in waiting
    rl.ping_pending = "ping" in waiting
    if "close" in waiting:
        # set only by close() and _fail(), which end the connection at once
        # (test_a_close_frame_comes_with_the_closed_state)
        rl.close_frame = RawFrame(FRAME_CLOSE, 0, 0, 0, b"")
        conn._state = ConnState.CLOSED


def _clear(conn: Connection) -> None:
    rl = conn.records
    rl.ctrl.clear()
    rl.pending_max_data = rl.pending_max_streams = rl.ping_pending = False
    rl.pending_stream_credit = None
    rl.close_frame = None
    rl.out.clear()
    rl.streams_dirty = False
    conn._state = ConnState.ESTABLISHED


def _combinations() -> list[tuple[str, ...]]:
    return [c for n in range(len(FIELDS) + 1) for c in itertools.combinations(FIELDS, n)]


@pytest.fixture
def established() -> tuple[Connection, int]:
    c, _s, _link = connect()
    conn = c.conn
    assert conn.established and not conn._lossy
    return conn, conn.open_stream()


def test_the_fast_paths_go_exactly_when_nothing_waits(
    established: tuple[Connection, int],
) -> None:
    conn, sid = established
    for waiting in _combinations():
        _clear(conn)
        _set(conn, sid, waiting)
        assert conn.records.waiting() == bool(waiting), waiting
        assert conn._can_seal_now() == (not waiting), waiting
        assert conn._nothing_goes_first() == (not waiting), waiting
        assert conn.has_output() == bool(waiting), waiting
        conn.records.streams_dirty = True
        assert conn.has_output(), waiting
        conn.records.streams_dirty = False
        assert (conn.seal_fast(sid, b"x", 1.0) is None) == bool(waiting), waiting
        # (only the lane also needs no sealed record before it: it writes to the carrier
        # itself, while the send path seals after what is in out)
        conn.records.out.append(b"sealed")
        assert conn._can_seal_now() == (not waiting), waiting
        assert not conn._nothing_goes_first(), waiting
        assert conn.has_output(), waiting
        assert conn.seal_fast(sid, b"x", 1.0) is None, waiting
    _clear(conn)


def test_build_returns_early_exactly_when_nothing_waits(
    established: tuple[Connection, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, sid = established
    sealed: list[int] = []
    seal = RecordLayer.seal

    def counted(self: RecordLayer, *args: Any, **kwargs: Any) -> None:
        sealed.append(1)
        seal(self, *args, **kwargs)

    monkeypatch.setattr(RecordLayer, "seal", counted)
    for waiting, dirty in itertools.product(_combinations(), (False, True)):
        _clear(conn)
        _set(conn, sid, waiting)
        conn.records.streams_dirty = dirty
        expected_early = not conn.records.waiting() and not dirty
        sealed.clear()
        conn.records.build(1.0, streams_may_go=True)
        assert (not sealed) == expected_early, (waiting, dirty)
        assert not conn.records.waiting()  # what waited went out
    _clear(conn)


def test_a_close_frame_comes_with_the_closed_state() -> None:
    """Why _nothing_goes_first() need not look at close_frame: the state says it."""
    c, _s, _link = connect()
    c.conn.close()
    assert c.conn.records.close_frame is not None
    assert c.conn._state is ConnState.CLOSED
    assert not c.conn._nothing_goes_first() and not c.conn._can_seal_now()


def test_no_fast_path_on_a_lossy_carrier() -> None:
    c, _s, _link = connect(reliable_carrier=False)
    assert c.conn.established and not c.conn.records.waiting()
    assert not c.conn._can_seal_now() and not c.conn._nothing_goes_first()
    assert c.conn.has_output()  # (an ACK may be due whenever a record came)
