"""The ledger carrier (sans-I/O, on a LocalLedger) against payloads its peer should not
post, and at the ledger's size limit."""

from __future__ import annotations

import struct

from dtp.carriers.ledger import KIND_FRAGMENT, MAX_PIPE_DATA, frame_record
from tests.test_carrier_ledger import CLIENT_ID, World

_FRAG = struct.Struct("<BIBB")  # kind, id, index, count


def test_fragments_that_disagree_on_their_count_are_dropped_not_raised() -> None:
    """Piece 2 of 3 then piece 0 of 2 under one id: two pieces reached the second
    count, piece 1 was missing and receive() raised KeyError (the bridge's thread died
    with it, ending the connection)."""
    world = World()
    cc, sc = world.carriers()
    send = world.ledger.pipe_send
    send(CLIENT_ID, cc.pipe_id, 0, _FRAG.pack(KIND_FRAGMENT, 7, 2, 3) + b"c")
    send(CLIENT_ID, cc.pipe_id, 0, _FRAG.pack(KIND_FRAGMENT, 7, 0, 2) + b"a")
    assert sc.receive() == []
    assert sc.malformed == 1
    # the carrier goes on: a record at the largest whole payload, then one byte over
    # (two fragments), both arrive whole
    records = [b"y" * (MAX_PIPE_DATA - 1), b"z" * MAX_PIPE_DATA]
    assert [len(p) for p in frame_record(records[0], 0)] == [MAX_PIPE_DATA]
    assert len(frame_record(records[1], 0)) == 2
    cc.send(records)
    assert sc.receive() == records
