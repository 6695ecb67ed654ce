"""A served stream's last bytes, its FIN and the MAX_STREAMS its end returns are sealed
as one record by ``Connection._seal_last`` with one ``Aead.seal_last`` call (frames built
and sealed in the core). Each answer here is sent twice, once so and once with
``seal_last`` replaced by the general way -- the frames encoded by ``encode_frames`` and
sealed by ``seal_one`` -- and the two must leave the same bytes to send, counters and
stream table: answers of every varint size, in one piece or two, with credit due or
none, and answers the fast path does not take (a stream still receiving)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dtp.native import core as _core
from dtp.native.types import FRAME_MAX_STREAMS, FRAME_STREAM, FRAME_STREAM_FIN, RawFrame
from tests.support.pairs import Side, connect, sealed_by

# (an answer: the client's and server's sides, and the stream IDs answered)
Answer = Callable[[Side, Side], list[int]]


def _call(c: Side, s: Side, request: bytes = b"request") -> int:
    """A request on a stream of the client's own, ended and taken by the server."""
    sid = c.conn.open_stream()
    if sid == 0:  # (IK: the ACCEPT opened stream 0; a call goes on a stream of its own)
        sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, request, end_stream=True)
    s.conn.receive_data(c.conn.data_to_send(0.0), 0.0)
    s.drain()
    return sid


def _answer(data: bytes) -> Answer:
    def answer(c: Side, s: Side) -> list[int]:
        sid = _call(c, s)
        s.conn.send_stream_data(sid, data, end_stream=True)
        return [sid]

    return answer


def _in_two_pieces(c: Side, s: Side) -> list[int]:
    # the FIN's frame at an offset past zero (and past 64: a two-byte offset)
    sid = _call(c, s)
    s.conn.send_stream_data(sid, b"a" * 70)
    s.conn.send_stream_data(sid, b"the rest", end_stream=True)
    return [sid]


def _forty_calls(c: Side, s: Side) -> list[int]:
    # the stream's ID, the answer's length and the stream count take two bytes each
    sids = []
    for i in range(40):
        if i:  # (the answers before the last read by the client)
            c.conn.receive_data(s.conn.data_to_send(0.0), 0.0)
        sid = _call(c, s, b"call %d" % i)
        s.conn.send_stream_data(sid, bytes(range(100)), end_stream=True)
        sids.append(sid)
    return sids


def _still_receiving(c: Side, s: Side) -> list[int]:
    # the request's stream not ended: its end frees nothing, no credit goes with it
    sid = c.conn.open_stream()
    if sid == 0:
        sid = c.conn.open_stream()
    frames = [RawFrame(FRAME_STREAM, sid, 0, 0, b"part")]
    s.conn.receive_data(sealed_by(c.conn, _core.encode_frames(frames)), 0.0)
    s.drain()
    s.conn.send_stream_data(sid, b"answer", end_stream=True)
    return [sid]


def _first_stream(c: Side, s: Side) -> list[int]:
    # the client's first stream (remembered as it goes), ended both ways
    c.conn.send_stream_data(0, b"hello", end_stream=True)
    s.conn.receive_data(c.conn.data_to_send(0.0), 0.0)
    s.drain()
    s.conn.send_stream_data(0, b"bye", end_stream=True)
    return [0]


CASES: dict[str, Answer] = {
    "an answer": _answer(b'{"jsonrpc":"2.0","id":1,"result":42}'),
    "an empty answer": _answer(b""),
    "a long answer": _answer(b"x" * 16000),
    "in two pieces": _in_two_pieces,
    "forty calls": _forty_calls,
    "still receiving": _still_receiving,
    "the first stream": _first_stream,
}


def _general(aead: Any) -> Callable[..., bytes]:
    def seal_last(counter: int, sid: int, offset: int, data: Any, max_streams: int = 0) -> bytes:
        frames = [RawFrame(FRAME_STREAM_FIN, sid, offset, 0, bytes(data))]
        if max_streams:
            frames.append(RawFrame(FRAME_MAX_STREAMS, max_streams))
        return aead.seal_one(counter, _core.encode_frames(frames))  # type: ignore[no-any-return]

    return seal_last


def _serve(
    answer: Answer, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[tuple[bytes, bytes]]]:
    """What the server leaves after ``answer`` (its records opened by the client: the
    two runs' keys differ), and each record seal_last sealed beside the general way's
    record of the same arguments (on the fast run)."""
    c, s, _ = connect()
    s.drain()
    rl = s.conn.records
    aead = rl.send_aead
    general = _general(aead)
    pairs: list[tuple[bytes, bytes]] = []

    def seal_last(*args: Any) -> bytes:
        want = general(*args)
        got = aead.seal_last(*args) if fast else want
        pairs.append((got, want))
        return got

    with monkeypatch.context() as patch:
        patch.setattr(rl, "send_aead", _Counted(aead, seal_last))
        sids = answer(c, s)
    table = s.conn.streams
    out = s.conn.data_to_send(0.0)
    records = c.conn._recv_aead.open_frames(bytearray(out)).records
    state = {
        "sent": [[(f.type, f.a, f.b, f.c, bytes(f.data)) for f in r.frames] for r in records],
        "counters": (rl.send_counter, rl.records_sent, rl.pending_max_streams),
        "table": (table.peer_done, table.conn_sent, sorted(table.by_id)),
        "streams": [
            None
            if st is None
            else (st.send_state, st.next_offset, st.base_offset, st.fin_acked, st.announce)
            for st in map(table.by_id.get, sids)
        ],
    }
    return state, pairs


class _Counted:
    """An AEAD whose ``seal_last`` is the one given; the rest is the AEAD's own."""

    def __init__(self, aead: Any, seal_last: Callable[..., bytes]) -> None:
        self._aead = aead
        self.seal_last = seal_last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aead, name)


@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_path_seals_what_the_general_one_does(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, pairs = _serve(CASES[case], True, monkeypatch)
    general, general_pairs = _serve(CASES[case], False, monkeypatch)
    assert fast == general and len(pairs) == len(general_pairs)
    assert all(got == want for got, want in pairs)  # (the same bytes, record by record)
    if case == "still receiving":
        assert not pairs
    else:
        assert len(pairs) == (40 if case == "forty calls" else 1)
        # the last answer's record, sent now: its FIN and the credit its end returns
        assert [f[0] for f in fast["sent"][-1]] == [FRAME_STREAM_FIN, FRAME_MAX_STREAMS]
