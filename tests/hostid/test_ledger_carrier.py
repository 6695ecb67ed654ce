"""The ledger carrier: two sans-I/O connections talking only through pipes on a LocalLedger.

The ledger carrier (sans-I/O, on a LocalLedger) against payloads its peer should not
post, and at the ledger's size limit."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest

from dtp.errors import ObjectNotFound, WrongSigner
from dtp.hostid.ledger_carrier._carrier import (
    KIND_FRAGMENT,
    KIND_RECORD,
    KIND_SYNC,
    MAX_ORPHAN_BYTES,
    MAX_PIPE_DATA,
    CarrierState,
    LedgerCarrier,
    LedgerLink,
    frame_record,
)
from dtp.ledger._objects import Event, EventFilter
from dtp.ledger.local import LocalLedger
from tests.hostid.ledger_carrier_pairs import (
    PORT,
    SLA,
    ImpairedLedger,
    World,
    frozen_clock,
    run_exchange,
    stepper,
)
from tests.support.pairs import CLIENT_ID, SERVER_ID, Side, make_pair


def _setup(
    world: World, ledger: Any = None, handshake_timeout: float = 10.0, **kw: Any
) -> tuple[Side, Side, LedgerLink, LedgerCarrier, LedgerCarrier]:
    client, server = make_pair(
        reliable_carrier=False, stream_window=256 * 1024, handshake_timeout=handshake_timeout
    )
    cc, sc = world.carriers(ledger, **kw)
    c, s = Side(client), Side(server)
    link = LedgerLink(client, server, cc, sc)
    assert link.run(lambda: client.established and server.established, on_round=stepper(c, s))
    return c, s, link, cc, sc


# -- framing ------------------------------------------------------------------------------


def test_framing_whole_and_fragments() -> None:
    assert frame_record(b"abc", 0) == [bytes([KIND_RECORD]) + b"abc"]
    big = os.urandom(12 + 16400)  # the largest DATA record
    parts = frame_record(big, 7)
    assert len(parts) == 2 and all(len(p) <= MAX_PIPE_DATA for p in parts)
    assert all(p[0] == KIND_FRAGMENT for p in parts)
    assert b"".join(p[7:] for p in parts) == big
    exact = os.urandom(MAX_PIPE_DATA - 1)
    assert frame_record(exact, 0) == [b"\x00" + exact]
    with pytest.raises(ValueError):
        frame_record(b"x" * 100_000, 0, limit=100)


# -- end to end ---------------------------------------------------------------------------


def test_handshake_and_streams_both_ways_exact() -> None:
    world = World()
    c, s, link, cc, sc = _setup(world)
    assert cc.peer_pipes == (sc.pipe_id,) and sc.peer_pipes == (cc.pipe_id,)
    # large records (full 16 KiB plaintexts) exceed one pipe_send: they travel fragmented
    run_exchange(c, s, link, (100_000, 1, 40_000), seed=1)
    kinds = {p[0] for p in world.payloads()}
    assert {KIND_RECORD, KIND_FRAGMENT, KIND_SYNC} <= kinds
    # the receivers acknowledged: pipe::sync was called on both pipes
    assert cc.pipe_syncs > 0 and sc.pipe_syncs > 0
    for carrier in (cc, sc):
        pipe = world.ledger.get_pipe(carrier.pipe_id)
        assert any(inner.acked > 0 for inner in pipe.inners)
        assert max(carrier.in_flight()) - min(carrier.in_flight()) <= carrier.sync_every + 2
        assert [i.next_seq for i in pipe.inners] == carrier._sent
    # load spread over all four inner pipes
    assert all(i.next_seq > 0 for i in world.ledger.get_pipe(cc.pipe_id).inners)
    assert cc.duplicates == sc.duplicates == 0
    minted = world.ledger.audit()
    assert minted["minted"] == minted["balances"] + minted["escrows"] + minted["broadcasts"]


def test_records_on_the_ledger_are_ciphertext() -> None:
    world = World()
    marker = b"PLAINTEXT-MARKER-0123456789"
    c, s, link, _, _ = _setup(world)
    run_exchange(c, s, link, (5_000, 30_000), seed=2, marker=marker)
    c.conn.send_datagram(marker)
    s.conn.send_control(16, marker)
    link.run(max_time=5)
    payloads = world.payloads()
    assert payloads
    assert not any(marker in p for p in payloads)
    assert marker not in b"".join(payloads)


@pytest.mark.parametrize("seed", range(5))
def test_impaired_events_still_deliver_exactly(seed: int) -> None:
    world = World()
    impaired = ImpairedLedger(world.ledger, seed=seed, loss=0.1, duplicate=0.1, reorder=0.3)
    # a lossy handshake may need its resends (0.5 s doubling) beyond the default 10 s
    c, s, link, cc, sc = _setup(world, impaired, handshake_timeout=60.0, gap_timeout=0.5)
    run_exchange(c, s, link, (60_000, 3_000, 25_000), seed=seed)
    assert impaired.dropped > 0

    # gaps (events that never arrive) are given up after gap_timeout, so the prefixes
    # the receivers acknowledge keep advancing
    def no_gaps() -> bool:
        return all(
            not above for c in (cc, sc) for ls in c.state().lanes.values() for _, above in ls
        )

    assert link.run(no_gaps, max_time=30)
    assert cc.gaps_given_up + sc.gaps_given_up > 0
    audit = world.ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_heavy_impairment_and_small_payloads() -> None:
    """15% of the events lost and a 4 KiB payload limit (every full record is cut into
    five fragments, so one lost fragment loses the record): still exact."""
    world = World()
    impaired = ImpairedLedger(world.ledger, seed=9, loss=0.15, duplicate=0.2, reorder=0.5)
    c, s, link, cc, sc = _setup(
        world, impaired, handshake_timeout=60.0, gap_timeout=0.3, max_payload=4096
    )
    run_exchange(c, s, link, (50_000, 7_000), seed=9)
    assert cc.malformed == sc.malformed == 0
    payloads = world.payloads()
    assert max(map(len, payloads)) <= 4096


def test_two_ledger_handles_on_one_file(tmp_path: Any) -> None:
    """Each side with its own LocalLedger on the same database file, as two processes
    would have."""
    world = World()
    path = tmp_path / "ledger.db"
    world.ledger.close()
    world.ledger = LocalLedger(path, clock_ms=0)
    world.host = world.ledger.create_host(SERVER_ID, SERVER_ID.noise_public, [])
    world.ledger.add_service(SERVER_ID, world.host, PORT, "raw", SLA)
    world.ledger.faucet(CLIENT_ID.sui_address, 100_000)
    cap = world.ledger.create_spending_cap(CLIENT_ID, 1_000_000)
    conn_id = world.ledger.open_connection(CLIENT_ID, world.host, PORT, cap, 1000).connection_id
    other = LocalLedger(path, clock_ms=0)
    cc = LedgerCarrier(world.ledger, CLIENT_ID, conn_id, peer_address=SERVER_ID.sui_address)
    sc = LedgerCarrier(other, SERVER_ID, conn_id, peer_address=CLIENT_ID.sui_address)
    client, server = make_pair(reliable_carrier=False)
    c, s = Side(client), Side(server)
    link = LedgerLink(client, server, cc, sc)
    assert link.run(lambda: client.established and server.established, on_round=stepper(c, s))
    run_exchange(c, s, link, (40_000,), seed=10)
    other.close()


class _Reversed(ImpairedLedger):
    """Returns each batch of events backwards, every event twice."""

    def events(
        self, cursor: str | None = None, filter: EventFilter | None = None, limit: int = 1000
    ) -> tuple[list[Event], str | None]:
        events, cursor = self._ledger.events(cursor, filter, limit)
        return [e for e in reversed(events) for _ in range(2)], cursor


def test_any_order_and_duplicates_at_the_carrier() -> None:
    world = World()
    cc, _ = world.carriers(inner_count=2)
    big = os.urandom(MAX_PIPE_DATA * 2)  # three fragments
    records = [b"r%d" % i for i in range(5)] + [big]
    reader = LedgerCarrier(
        _Reversed(world.ledger, seed=0),  # type: ignore[arg-type]
        SERVER_ID,
        world.conn_id,
        peer_address=CLIENT_ID.sui_address,
        sync_every=1000,
    )
    cc.send(records)
    got = reader.receive(now=0.0)
    assert sorted(got) == sorted(records)
    assert reader.duplicates == 8  # 5 whole records and 3 fragments, each seen twice
    assert [p for p, _ in reader.state().lanes[cc.pipe_id]] == cc._sent
    assert reader.get_timer() == reader.sync_interval  # one report due, none echoed
    assert reader.receive(now=0.5) == []


def test_pipes_are_owned() -> None:
    world = World()
    cc, sc = world.carriers()
    with pytest.raises(WrongSigner):
        world.ledger.pipe_send(SERVER_ID, cc.pipe_id, 0, b"forged")
    with pytest.raises(WrongSigner):
        world.ledger.pipe_sync(SERVER_ID, cc.pipe_id, 0, 0)
    with pytest.raises(WrongSigner):
        world.ledger.destroy_pipe(CLIENT_ID, sc.pipe_id)
    assert world.ledger.get_pipe(cc.pipe_id).owner == CLIENT_ID.sui_address


def test_events_from_other_pipes_are_ignored() -> None:
    world = World()
    cc, sc = world.carriers()
    # a second pipe of the client's, not the one the server's carrier learned first, on
    # the same connection: still the peer's, so it is read; a pipe of the server's own
    # is not (the server's carrier reads the client's sends only)
    other = world.ledger.create_pipe(SERVER_ID, world.conn_id, 1)
    world.ledger.pipe_send(SERVER_ID, other, 0, b"\x00server-to-itself")
    cc.send([b"rec-1"])
    assert sc.receive() == [b"rec-1"]
    world.ledger.pipe_send(CLIENT_ID, cc.pipe_id, 0, b"")
    world.ledger.pipe_send(CLIENT_ID, cc.pipe_id, 0, b"\x7fjunk")
    assert sc.receive() == [] and sc.malformed == 2
    assert cc.receive() == [b"server-to-itself"]  # the client reads every server pipe
    assert sc.receive() == []


def test_close_destroys_the_pipe() -> None:
    world = World()
    cc, sc = world.carriers()
    cc.send([b"last"])
    cc.close()
    cc.close()
    with pytest.raises(ObjectNotFound):
        world.ledger.get_pipe(cc.pipe_id)
    assert sc.receive() == [b"last"]
    assert sc.peer_closed
    with pytest.raises(RuntimeError):
        cc.send([b"more"])


def test_sync_cadence_does_not_echo() -> None:
    world = World()
    cc, sc = world.carriers(sync_every=4, sync_interval=10.0)
    cc.send([b"r%d" % i for i in range(4)])
    assert len(sc.receive(now=0.0)) == 4
    assert sc.syncs_sent == 1
    cc.receive(now=0.0)  # reads the SYNC, calls pipe::sync
    assert cc.pipe_syncs > 0 and sum(cc.in_flight()) == 0
    # the SYNC is not data: no SYNC comes back, however long we wait
    for t in (20.0, 40.0):
        cc.receive(now=t)
        sc.receive(now=t)
    assert cc.syncs_sent == 0 and sc.syncs_sent == 1
    assert cc.get_timer() is None and sc.get_timer() is None
    # a single record is reported after sync_interval
    cc.send([b"one"])
    assert sc.receive(now=50.0) == [b"one"] and sc.syncs_sent == 1
    assert sc.get_timer() == 60.0
    sc.poll(60.0)
    assert sc.syncs_sent == 2


def test_adopting_an_existing_pipe() -> None:
    world = World()
    cc, sc = world.carriers(inner_count=2)
    cc.send([b"a", b"b", b"c"])
    again = LedgerCarrier(
        world.ledger,
        CLIENT_ID,
        world.conn_id,
        peer_address=SERVER_ID.sui_address,
        pipe_id=cc.pipe_id,
    )
    assert again.inner_count == 2 and sum(again._sent) == 3
    again.send([b"d"])
    assert sc.receive() == [b"a", b"b", b"c", b"d"]
    with pytest.raises(ValueError):  # a pipe of another connection
        LedgerCarrier(
            world.ledger,
            CLIENT_ID,
            "0x" + "11" * 32,
            peer_address=SERVER_ID.sui_address,
            pipe_id=cc.pipe_id,
        )


# -- resuming -----------------------------------------------------------------------------


def test_resumed_carrier_does_not_redeliver() -> None:
    world = World()
    c, s, link, _cc, sc = _setup(world)
    step = stepper(c, s)
    early: CarrierState = sc.state()
    # more traffic, then the server's carrier is replaced by one resumed from its state
    run_exchange(c, s, link, (20_000,), seed=3)
    saved = sc.state()
    resumed = LedgerCarrier(
        world.ledger,
        SERVER_ID,
        world.conn_id,
        peer_address=CLIENT_ID.sui_address,
        state=saved,
        clock=frozen_clock,
    )
    assert resumed.pipe_id == sc.pipe_id and resumed.cursor == sc.cursor
    assert resumed.receive(now=link.now) == []  # nothing seen before is handed back
    link.cb = resumed
    run_exchange(c, s, link, (30_000,), seed=4)

    # a carrier resumed from an older snapshot re-reads what came after it: the
    # connection's replay window drops every one of those records, and no stream data
    # is delivered twice
    stale = LedgerCarrier(
        world.ledger,
        SERVER_ID,
        world.conn_id,
        peer_address=CLIENT_ID.sui_address,
        state=early,
        clock=frozen_clock,
    )
    replayed = stale.receive(now=link.now)
    assert replayed
    before = {sid: bytes(d) for sid, d in s.data.items()}
    for record in replayed:
        s.conn.receive_datagram(record, link.now)
    step()
    assert {sid: bytes(d) for sid, d in s.data.items()} == before
    assert not s.conn.closed
    link.cb = stale
    run_exchange(c, s, link, (10_000,), seed=5)


def test_conservation_after_settle() -> None:
    world = World()
    c, s, link, cc, sc = _setup(world)
    run_exchange(c, s, link, (10_000,), seed=6)
    cc.close()
    sc.close()
    world.ledger.close_connection(CLIENT_ID, world.conn_id)
    world.ledger.close_connection(SERVER_ID, world.conn_id)
    world.ledger.settle(SERVER_ID, world.conn_id)
    audit = world.ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


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
    data events too. A pipe whose PipeCreated names another connection is skipped, and
    what is kept of unknown pipes (in case a PipeCreated of its own connection comes
    later) is within 1 MiB."""
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
