"""Over TCP, records are accepted in counter order only.

A sender numbers its records 0, 1, 2, ... and TCP delivers them as sent, yet the
receiver took any counter its replay window had not seen: someone on the path could
remove a whole record from the byte stream, or move it later, and the connection went
on -- an application CONTROL message, a DATAGRAM or a RESET_STREAM dropped or reordered
without a trace (stream data alone was covered, by its offsets). TLS and SSH end the
connection on any gap. ``Aead.set_in_order`` (C and twin) makes every counter but the
next a replay; connections over reliable carriers set it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from dtp.errors import LocalProtocolError
from dtp.native.types import OK, STOP
from dtp.protocol._events import ControlReceived
from dtp.protocol.connection import CloseCode
from tests.native.lanes import SID, take
from tests.support.backends import BACKENDS
from tests.support.pairs import Side, connect

KEY = os.urandom(32)


def _records(backend: SimpleNamespace, count: int) -> list[bytes]:
    sender = backend.Aead(KEY)
    return [sender.seal_stream(i, SID, i, b"x")[0] for i in range(count)]


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_only_the_next_counter_is_new(b: SimpleNamespace) -> None:
    r = _records(b, 5)
    loose = b.Aead(KEY)  # the window, for contrast: any unseen counter
    assert [o.replayed for o in loose.open_frames(r[0] + r[2] + r[1]).records] == [0, 0, 0]

    strict = b.Aead(KEY)
    strict.set_in_order()
    opened = strict.open_frames(r[0] + r[1] + r[3] + r[2] + r[1])
    assert [(o.counter, o.replayed) for o in opened.records] == [
        (0, False),
        (1, False),
        (3, True),  # record 2 went missing: 3 is not the next
        (2, False),  # ... and 2, when it comes, is
        (1, True),
    ]
    assert strict.replay_top == 2
    first = b.Aead(KEY)
    first.set_in_order()
    assert first.open_frames(r[1]).records[0].replayed  # the first must be 0


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_only_before_the_first_record(b: SimpleNamespace) -> None:
    aead = b.Aead(KEY)
    aead.open_frames(_records(b, 1)[0])
    with pytest.raises(LocalProtocolError):
        aead.set_in_order()


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_the_lane_stops_at_a_gap(b: SimpleNamespace) -> None:
    r = _records(b, 3)
    recv = b.Aead(KEY)
    recv.set_in_order()
    lane = b.Lane(b.Aead(os.urandom(32)), recv)
    got = take(lane, r[0] + r[2], bytearray(10))
    assert (got.status, got.consumed, got.taken) == (STOP, len(r[0]), 1)
    assert take(lane, r[1] + r[2], bytearray(10), offset=1).status == OK


def _controls(count: int) -> tuple[Side, Side, list[bytes]]:
    c, s, _link = connect()
    records = []
    for i in range(count):
        c.conn.send_control(16, b"message %d" % i)
        records.append(c.conn.data_to_send(1.0))
    return c, s, records


@pytest.mark.parametrize("order", [(1, 2, 0), (0, 2), (1, 0)])
def test_a_record_removed_or_moved_on_tcp_ends_the_connection(order: tuple[int, ...]) -> None:
    _, s, records = _controls(3)
    for i in order:
        s.conn.receive_data(records[i], 1.0)
    s.drain()
    got = [e.data for e in s.of(ControlReceived)]
    assert got == ([b"message 0"] if order[0] == 0 else [])  # what came before the gap
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.REPLAY_DETECTED
    assert "out of order" in term.reason


def test_in_order_records_pass() -> None:
    _, s, records = _controls(3)
    s.conn.receive_data(b"".join(records), 1.0)
    s.drain()
    assert [e.data for e in s.of(ControlReceived)] == [
        b"message 0",
        b"message 1",
        b"message 2",
    ]
    assert not s.conn.closed


def test_lossy_carriers_still_reorder() -> None:
    c, s, _link = connect(reliable_carrier=False)
    records = []
    for i in range(3):
        c.conn.send_control(16, b"message %d" % i)
        records.extend(c.conn.datagrams_to_send(1.0))
    for record in reversed(records):
        s.conn.receive_data(record, 1.0)
    s.drain()
    assert sorted(e.data for e in s.of(ControlReceived)) == [
        b"message 0",
        b"message 1",
        b"message 2",
    ]
    assert not s.conn.closed
