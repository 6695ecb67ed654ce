"""The ledger carrier's reassembly of fragmented records holds no more than a record's
worth per fragment id: a hostile peer posting full-size pieces under a fragment id with
255 of them made the carrier keep up to 255 x 16 KiB per id (64 ids: 267 MB), for a
DTP record that can be at most 16 KiB (the bridge's carriers are given that bound;
others keep taking any record 255 fragments carry). A LocalLedger in memory."""

from __future__ import annotations

import struct

from dtp.carriers.ledger import KIND_FRAGMENT, MAX_DTP_RECORD, MAX_PIPE_DATA, frame_record
from tests.test_carrier_ledger import CLIENT_ID, World

_HEADER = struct.Struct("<BIBB")


def test_fragments_beyond_a_records_size_are_dropped() -> None:
    world = World()
    cc, sc = world.carriers(max_record=MAX_DTP_RECORD)  # as the bridge's carriers
    piece = b"p" * (MAX_PIPE_DATA - _HEADER.size)
    for index in range(4):  # 64 KiB under one id that claims 255 pieces
        payload = _HEADER.pack(KIND_FRAGMENT, 7, index, 255) + piece
        world.ledger.pipe_send(CLIENT_ID, cc.pipe_id, 0, payload)
    assert sc.receive() == []
    assert sc.malformed == 2  # (pieces 0-1 over the size, then 2-3 again)
    held = sum(len(p) for _, parts in sc._partial.values() for p in parts.values())
    assert held <= MAX_DTP_RECORD
    # a record in fragments still comes whole
    record = bytes(range(256)) * 64  # 16 KiB
    for payload in frame_record(record, 8, 1000):
        world.ledger.pipe_send(CLIENT_ID, cc.pipe_id, 0, payload)
    assert sc.receive() == [record]
