"""The ledger carrier (sans-I/O, on a LocalLedger) against payloads its peer should not
post, and at the ledger's size limit."""

from __future__ import annotations

import struct
from typing import Any

from dtp.carriers.ledger import KIND_FRAGMENT, MAX_PIPE_DATA, LedgerCarrier, frame_record
from dtp.chain.local import LocalLedger
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


class _CountingReads:
    """Passes everything through to the ledger, counting get_pipe calls."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.pipe_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def get_pipe(self, pipe_id: str) -> Any:
        self.pipe_reads += 1
        return self._ledger.get_pipe(pipe_id)


def test_data_of_the_peers_other_connections_is_not_kept() -> None:
    """The peer's other connections share its sender address, so a carrier reads their
    data events too; it kept each (up to 1024 payloads, 16 MiB per connection) in case
    a PipeCreated of its own connection came later. Now their pipe is looked up once and
    their data skipped, while a pipe of ours whose PipeCreated we missed is learned."""
    world = World()
    other = world.ledger.open_connection(CLIENT_ID, world.host, PORT, world.cap, 1000)
    theirs = LedgerCarrier(
        world.ledger, CLIENT_ID, other.connection_id, peer_address=SERVER_ID.sui_address
    )
    counting = _CountingReads(world.ledger)
    reader = LedgerCarrier(
        counting,  # type: ignore[arg-type]
        SERVER_ID,
        world.conn_id,
        peer_address=CLIENT_ID.sui_address,
    )
    reader.cursor = world.ledger.head_cursor()  # after the other pipe's PipeCreated
    counting.pipe_reads = 0  # (the reader read its own pipe)
    theirs.send([b"x" * 16_000] * 40)
    assert reader.receive() == []
    assert reader._orphans == []  # (it held 40 payloads of 16 kB here)
    # our client's pipe, created before the reader's cursor too: its PipeCreated is
    # never read, its data is ours all the same
    ours = LedgerCarrier(world.ledger, CLIENT_ID, world.conn_id, peer_address=SERVER_ID.sui_address)
    reader.cursor = world.ledger.head_cursor()
    theirs.send([b"y" * 16_000] * 40)
    ours.send([b"mine-1", b"mine-2"])
    theirs.send([b"z" * 16_000] * 40)
    assert reader.receive() == [b"mine-1", b"mine-2"]
    assert reader._orphans == []
    assert counting.pipe_reads == 2  # one per pipe it did not know, not per event
    assert reader.peer_pipes == (ours.pipe_id,)
