"""The ledger carrier (sans-I/O, on a LocalLedger) against payloads its peer should not
post, and at the ledger's size limit."""

from __future__ import annotations

import struct

from dtp.carriers.ledger import (
    KIND_FRAGMENT,
    MAX_ORPHAN_BYTES,
    MAX_PIPE_DATA,
    LedgerCarrier,
    frame_record,
)
from tests.test_carrier_ledger import CLIENT_ID, PORT, SERVER_ID, World

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


def _held(carrier: LedgerCarrier) -> int:
    """Payload bytes the carrier keeps for pipes it does not know."""
    return sum(len(e["data"]) for e in carrier._orphans)


def test_data_of_the_peers_other_connections_is_not_kept() -> None:
    """The peer's other connections share its sender address, so a carrier reads their
    data events too; it kept each (up to 1024 payloads, 16 MiB per connection) in case
    a PipeCreated of its own connection came later. Now a pipe whose PipeCreated named
    another connection is skipped, and what is kept of unknown pipes is within 1 MiB."""
    world = World()
    other = world.ledger.open_connection(CLIENT_ID, world.host, PORT, world.cap, 1000)
    reader = LedgerCarrier(
        world.ledger, SERVER_ID, world.conn_id, peer_address=CLIENT_ID.sui_address
    )
    # a pipe of the other connection created before the reader's cursor: unknown
    older = LedgerCarrier(
        world.ledger, CLIENT_ID, other.connection_id, peer_address=SERVER_ID.sui_address
    )
    reader.cursor = world.ledger.head_cursor()
    older.send([b"x" * 16_000] * 100)
    assert reader.receive() == []
    assert 0 < _held(reader) <= MAX_ORPHAN_BYTES  # (it held 100 payloads, 1.6 MB)
    # one created after it: its PipeCreated names the other connection, nothing kept
    newer = LedgerCarrier(
        world.ledger, CLIENT_ID, other.connection_id, peer_address=SERVER_ID.sui_address
    )
    before = _held(reader)
    ours = LedgerCarrier(world.ledger, CLIENT_ID, world.conn_id, peer_address=SERVER_ID.sui_address)
    newer.send([b"y" * 16_000] * 40)
    ours.send([b"mine-1", b"mine-2"])
    assert reader.receive() == [b"mine-1", b"mine-2"]
    assert _held(reader) == before
    assert reader.peer_pipes == (ours.pipe_id,)
