"""A read that is one record of one frame opening the peer's next stream whole (a short
call's request), or of one DATAGRAM frame that the datagram run handler takes (a quiet
flow's datagram), is taken by ``Connection._receive_whole_stream`` without the general
loops; every other read it hands to the general path (its record opened already when
it is one record of one frame, not an ACK: open_lone_frame). Each read here is fed to
a server with a stream data handler twice, once as it is and once with that fast path
replaced by the general one, and the two must leave the same handler calls, events,
stream table, counters, termination and output: the requests and datagrams it takes,
and the reads it must give up on (two records, a gap in the stream ids, a window or
the stream limit refusing, a damaged or replayed record, a partial one, a record of one
frame that opens no stream, an ACK, a DATAGRAM with no run handler or an event
waiting before it, a request padded)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from dtp.native import core as _core
from dtp.native.types import (
    FRAME_ACK,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_PING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    RawFrame,
)
from dtp.protocol._events import StreamOpened
from dtp.protocol.connection import Connection
from tests.support.pairs import Side, connect, sealed_by

# (a read is made for each run: the keys differ between the two)
Reads = Callable[[Side, Side], list[bytes]]


def _next_id(s: Side) -> int:
    return 2 * s.conn.streams.peer_opened


def _request(c: Side, stream_id: int, data: bytes = b'{"m":"ping"}', offset: int = 0) -> bytes:
    return sealed_by(
        c.conn, _core.encode_frames([RawFrame(FRAME_STREAM_FIN, stream_id, offset, 0, data)])
    )


def _requests(c: Side, s: Side) -> list[bytes]:
    # three calls, each read one whole request: the fast path's own case, again and again
    first = _next_id(s)
    return [_request(c, first + 2 * i, b"call %d" % i) for i in range(3)]


def _empty_request(c: Side, s: Side) -> list[bytes]:
    return [_request(c, _next_id(s), b"")]


def _two_in_one_read(c: Side, s: Side) -> list[bytes]:
    first = _next_id(s)
    return [_request(c, first) + _request(c, first + 2)]


def _with_a_partial_record(c: Side, s: Side) -> list[bytes]:
    first = _next_id(s)
    one = _request(c, first)
    two = _request(c, first + 2)
    return [one + two[:7], two[7:]]


def _split_record(c: Side, s: Side) -> list[bytes]:
    record = _request(c, _next_id(s))
    return [record[:5], record[5:]]


def _skips_a_stream(c: Side, s: Side) -> list[bytes]:
    return [_request(c, _next_id(s) + 4)]


def _not_from_offset_zero(c: Side, s: Side) -> list[bytes]:
    return [_request(c, _next_id(s), offset=3)]


def _own_stream_id(c: Side, s: Side) -> list[bytes]:
    return [_request(c, _next_id(s) + 1)]  # (odd: the server's own)


def _open_not_ended(c: Side, s: Side) -> list[bytes]:
    first = _next_id(s)
    frame = RawFrame(FRAME_STREAM, first, 0, 0, b"part")
    return [sealed_by(c.conn, _core.encode_frames([frame])), _request(c, first, b"rest", 4)]


def _two_frames(c: Side, s: Side) -> list[bytes]:
    first = _next_id(s)
    frames = [
        RawFrame(FRAME_STREAM_FIN, first, 0, 0, b"a"),
        RawFrame(FRAME_STREAM_FIN, first + 2, 0, 0, b"b"),
    ]
    return [sealed_by(c.conn, _core.encode_frames(frames))]


def _past_the_stream_window(c: Side, s: Side) -> list[bytes]:
    s.conn.streams.stream_window = 8
    return [_request(c, _next_id(s), b"x" * 9)]


def _past_the_connection_window(c: Side, s: Side) -> list[bytes]:
    table = s.conn.streams
    table.conn_recv_limit = table.conn_received + 8
    return [_request(c, _next_id(s), b"x" * 9)]


def _past_the_stream_limit(c: Side, s: Side) -> list[bytes]:
    table = s.conn.streams
    table.local_max = table.peer_opened - table.peer_done
    return [_request(c, _next_id(s))]


def _damaged(c: Side, s: Side) -> list[bytes]:
    record = bytearray(_request(c, _next_id(s)))
    record[-1] ^= 1
    return [bytes(record)]


def _replayed(c: Side, s: Side) -> list[bytes]:
    record = _request(c, _next_id(s))
    return [record, record]


def _out_of_order(c: Side, s: Side) -> list[bytes]:
    first = _next_id(s)
    one, two = _request(c, first), _request(c, first + 2)
    return [two, one]


def _one_frame(frame: RawFrame) -> Reads:
    return lambda c, s: [sealed_by(c.conn, _core.encode_frames([frame]))]


def _datagram(c: Side, data: bytes) -> bytes:
    return sealed_by(c.conn, _core.encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, data)]))


def _datagrams(c: Side, s: Side) -> list[bytes]:
    # a quiet flow's datagrams, each its own read: the run handler takes each
    return [_datagram(c, b"dgram %d" % i) for i in range(3)] + [_datagram(c, b"")]


def _datagram_after_an_event(c: Side, s: Side) -> list[bytes]:
    # (an event waiting: the run handler must not overtake it, the general path judges)
    s.conn._events.append(StreamOpened(1))
    return [_datagram(c, b"late")]


def _padded_request(c: Side, s: Side) -> list[bytes]:
    frame = RawFrame(FRAME_STREAM_FIN, _next_id(s), 0, 0, b"call")
    return [sealed_by(c.conn, _core.encode_frames([frame]) + bytes(3))]


CASES: dict[str, Reads] = {
    "requests": _requests,
    "empty request": _empty_request,
    "two in one read": _two_in_one_read,
    "with a partial record": _with_a_partial_record,
    "split record": _split_record,
    "skips a stream": _skips_a_stream,
    "not from offset zero": _not_from_offset_zero,
    "own stream id": _own_stream_id,
    "open, not ended": _open_not_ended,
    "two frames": _two_frames,
    "past the stream window": _past_the_stream_window,
    "past the connection window": _past_the_connection_window,
    "past the stream limit": _past_the_stream_limit,
    "damaged": _damaged,
    "replayed": _replayed,
    "out of order": _out_of_order,
    # one record of one frame that opens no stream (opened by open_lone_frame, then
    # handed on), and records open_lone_frame leaves unopened
    "a ping": _one_frame(RawFrame(FRAME_PING)),
    "a credit update": _one_frame(RawFrame(FRAME_MAX_DATA, 1 << 30)),
    "an ack": _one_frame(RawFrame(FRAME_ACK, c=0, ranges=((0, 3),))),
    "a datagram": _one_frame(RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"d")),
    # (with datagram handlers set: DATAGRAM_HANDLED)
    "datagrams, handled": _datagrams,
    "a datagram after an event, handled": _datagram_after_an_event,
    "a padded request": _padded_request,
}
#: the cases whose server has datagram handlers (as a session sets them): a run handler,
#: and the one each datagram goes to when a record's run is not handed on whole
DATAGRAM_HANDLED = ("datagrams, handled", "a datagram after an event, handled")


def _snapshot(c: Side, s: Side, calls: list[tuple[int, bytes, bool]], now: float) -> Any:
    conn = s.conn
    s.drain()
    table = conn.streams
    streams = {
        sid: {
            f.name: (getattr(st, f.name) is None if f.name == "reasm" else getattr(st, f.name))
            for f in dataclasses.fields(st)
        }
        for sid, st in table.by_id.items()
    }
    term = conn.termination
    out = conn.data_to_send(now)
    sent = []
    if out and c.conn._recv_aead is not None:
        # what the server answers (a CLOSE and its code, or nothing), opened
        for record in c.conn._recv_aead.open_frames(bytearray(out)).records:
            sent += [(f.type, f.a, f.b, f.c, bytes(f.data)) for f in record.frames]
    return {
        "calls": calls,
        "events": [repr(e) for e in s.events],
        "state": conn.state,
        "termination": None if term is None else (term.error_code, term.reason, term.by_peer),
        "streams": streams,
        "table": (
            table.peer_opened,
            table.peer_done,
            table.conn_received,
            table.conn_consumed,
            None if table.untaken is None else sorted(table.untaken),
        ),
        "records_received": conn.records_received,
        "datagram_bytes": conn.datagram_bytes,
        "bytes_received": conn.bytes_received,
        "lane": conn._lane_sid,
        "inbuf": bytes(conn._inbuf),
        "sent": sent,
    }


def _serve(
    reads: Reads, fast: bool, monkeypatch: pytest.MonkeyPatch, datagrams: bool = False
) -> tuple[Any, int, int]:
    """The server's account of ``reads``, how many reads the fast path took whole, and
    how many reads there were; ``datagrams``: the server has datagram handlers, whose
    calls are handler calls too."""
    c, s, link = connect()
    s.drain()
    s.events.clear()
    calls: list[Any] = []
    s.conn.stream_data_handler = lambda sid, data, fin: calls.append((sid, bytes(data), fin))
    if datagrams:
        s.conn.datagram_handler = lambda data: calls.append(("one", bytes(data)))
        s.conn.datagram_run_handler = lambda run: calls.append(("run", [bytes(d) for d in run]))
    taken = general_passes = 0
    receive = Connection._receive
    whole = Connection._receive_whole_stream

    def counted(self: Connection, *args: Any) -> None:
        nonlocal general_passes
        general_passes += 1
        receive(self, *args)

    def fast_path(self: Connection, data: bytes, now: float) -> None:
        nonlocal taken
        before = general_passes
        whole(self, data, now)
        taken += general_passes == before

    with monkeypatch.context() as patch:
        patch.setattr(Connection, "_receive", counted)
        if fast:
            patch.setattr(Connection, "_receive_whole_stream", fast_path)
        else:
            patch.setattr(
                Connection,
                "_receive_whole_stream",
                lambda self, data, now: self._receive(data, now),
            )
        data = reads(c, s)
        for read in data:
            s.conn.receive_data(read, link.now)
    return _snapshot(c, s, calls, link.now), taken, len(data)


@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_path_leaves_what_the_general_one_does(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled = case in DATAGRAM_HANDLED
    fast, taken, reads = _serve(CASES[case], True, monkeypatch, handled)
    general, none, _ = _serve(CASES[case], False, monkeypatch, handled)
    assert none == 0
    assert fast == general
    if case in ("requests", "empty request", "datagrams, handled"):
        # the fast path's own cases: taken whole, every read
        assert taken == reads == len(fast["calls"])
        assert fast["termination"] is None
    else:
        assert taken < reads  # (some read went the general way)


def test_a_request_taken_whole_is_opened_ended_and_handed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, taken, _ = _serve(_requests, True, monkeypatch)
    assert taken == 3
    first = state["calls"][0][0]
    assert state["calls"] == [(first + 2 * i, b"call %d" % i, True) for i in range(3)]
    for i in range(3):
        stream = state["streams"][first + 2 * i]
        assert stream["delivered"] == stream["final_size"] == len(b"call %d" % i)
    assert sum(e.startswith("StreamOpened(") for e in state["events"]) == 3
    assert state["lane"] == first + 4


def test_a_datagram_taken_whole_goes_to_the_run_handler_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, taken, _ = _serve(_datagrams, True, monkeypatch, datagrams=True)
    assert taken == 4
    assert state["calls"] == [("run", [b"dgram %d" % i]) for i in range(3)] + [("run", [b""])]
    assert state["datagram_bytes"] == 3 * len(b"dgram 0")
    assert not state["events"] and state["termination"] is None


def test_the_stream_limit_refusal_closes_as_the_general_path_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, _, _ = _serve(_past_the_stream_limit, True, monkeypatch)
    assert fast["termination"] is not None and not fast["calls"]
    assert fast["sent"]  # (a CLOSE went out)
