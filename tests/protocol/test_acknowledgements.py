"""What a receiver on a lossy carrier acknowledges, and when (docs/protocol.md section 9,
"Acknowledgements"): every record it took, ack-eliciting or not; an ACK due at once on
the second ack-eliciting record, else 25 ms after the first one's arrival, and never
for records that elicit none; the ack delay counted from the arrival of the largest
counter acknowledged. Driven in memory on a virtual clock; the client seals what frames
it likes (sealed_by)."""

from __future__ import annotations

from dtp.native import core as _core
from dtp.native.types import FRAME_ACK, FRAME_PADDING, FRAME_STREAM, RawFrame
from dtp.protocol.connection import Connection
from tests.support.pairs import Side, connect, run, sealed_by


def _quiet_pair() -> tuple[Side, Side, float, int]:
    """A lossy pair with nothing left to acknowledge either way, the client's stream
    open; the clock then, and the stream."""
    c, s, link = connect(reliable_carrier=False)
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"open")
    assert run(link, c, s, lambda: not c.conn.records.awaiting_acks())
    assert run(link, c, s, lambda: s.conn.records.acks.ack_deadline is None)  # type: ignore[union-attr]
    return c, s, link.now, sid


def _acks_sent(server: Connection, client: Connection, now: float) -> list[RawFrame]:
    """The ACK frames in what ``server`` sends at ``now`` (its timers run first)."""
    server.handle_timer(now)
    acks = []
    for datagram in server.datagrams_to_send(now):
        for record in client._recv_aead.open_frames(bytearray(datagram)).records:
            acks += [f for f in record.frames if f.type == FRAME_ACK]
    return acks


def _stream_record(c: Side, sid: int, offset: int) -> tuple[int, bytes]:
    counter = c.conn.records.send_counter
    frame = RawFrame(FRAME_STREAM, sid, offset, 0, b"x")
    return counter, sealed_by(c.conn, _core.encode_frames([frame]))


def _ack_only_record(c: Side) -> tuple[int, bytes]:
    """A record of an ACK (of the server's first record) and PADDING: ack-eliciting
    it is not."""
    counter = c.conn.records.send_counter
    frames = [RawFrame(FRAME_ACK, c=0, ranges=((0, 0),)), RawFrame(FRAME_PADDING, 3)]
    return counter, sealed_by(c.conn, _core.encode_frames(frames))


def test_records_that_elicit_no_ack_never_make_one_due() -> None:
    c, s, now, _ = _quiet_pair()
    for i in range(5):
        _, record = _ack_only_record(c)
        s.conn.receive_datagram(record, now + i * 0.01)
    assert s.conn.records.acks is not None and s.conn.records.acks.ack_deadline is None
    assert _acks_sent(s.conn, c.conn, now + 1.0) == []


def test_an_ack_is_due_25_ms_after_the_first_record_or_at_the_second() -> None:
    c, s, now, sid = _quiet_pair()
    first, record = _stream_record(c, sid, 4)
    s.conn.receive_datagram(record, now)
    assert _acks_sent(s.conn, c.conn, now + 0.0249) == []
    (ack,) = _acks_sent(s.conn, c.conn, now + 0.025)
    assert ack.ranges[0][1] == first
    # a second ack-eliciting record makes it due at once, whenever the first came
    later = now + 1.0
    _, record = _stream_record(c, sid, 5)
    s.conn.receive_datagram(record, later)
    assert _acks_sent(s.conn, c.conn, later + 0.020) == []
    second, record = _stream_record(c, sid, 6)
    s.conn.receive_datagram(record, later + 0.021)
    (ack,) = _acks_sent(s.conn, c.conn, later + 0.021)
    assert ack.ranges[0][1] == second and ack.c == 0


def test_an_ack_lists_records_that_elicited_none_and_times_from_the_largest() -> None:
    """The ACK due for an ack-eliciting record also lists the ACK-only record that came
    after it (one range over both counters), and its ack delay is counted from that
    record's arrival -- the largest counter it lists -- not from the first's."""
    c, s, now, sid = _quiet_pair()
    eliciting, record = _stream_record(c, sid, 4)
    s.conn.receive_datagram(record, now)
    ack_only, record = _ack_only_record(c)
    assert ack_only == eliciting + 1
    s.conn.receive_datagram(record, now + 0.010)
    (ack,) = _acks_sent(s.conn, c.conn, now + 0.030)  # (due at +25 ms, built at +30)
    assert ack.ranges[0] == (ack.ranges[0][0], ack_only) and ack.ranges[0][0] <= eliciting
    assert ack.c == 20_000  # microseconds since the ACK-only record came
    # and the next ACK repeats those ranges
    _, record = _stream_record(c, sid, 5)
    s.conn.receive_datagram(record, now + 1.0)
    (again,) = _acks_sent(s.conn, c.conn, now + 1.025)
    assert again.ranges[-1][0] <= eliciting and again.ranges[0][1] == ack_only + 1


def test_a_duplicate_is_not_taken_again() -> None:
    """A record that arrives twice is noted once: the copy elicits no ACK of its own."""
    c, s, now, sid = _quiet_pair()
    _, record = _stream_record(c, sid, 4)
    s.conn.receive_datagram(record, now)
    assert len(_acks_sent(s.conn, c.conn, now + 0.025)) == 1
    s.conn.receive_datagram(record, now + 1.0)
    assert _acks_sent(s.conn, c.conn, now + 2.0) == []
