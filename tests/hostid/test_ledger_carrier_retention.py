"""Data retention on the ledger carrier (docs/ledger-carrier.md "Retention", docs/escrow.md
§16): data payloads sent as RetainedRecords, confirmed by the receiver once consumed, and
deleted by the sender after the retention time for its storage deposit; sans-I/O over
LedgerLink and through the socket bridge, on LocalLedger files."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import NotAuthorized, PaymentModelError, WrongObject
from dtp.hostid.ledger_carrier._bridge import LEDGER_HANDSHAKE_TIMEOUT, LedgerCarrierOptions
from dtp.hostid.ledger_carrier._carrier import (
    KIND_SYNC,
    LedgerCarrier,
    confirm_records,
    confirm_retained,
    reclaim_retained,
)
from dtp.ledger._objects import EventFilter
from dtp.ledger.local import LocalLedger
from tests.hostid.ledger_carrier_pairs import ImpairedLedger, frozen_clock, run_exchange
from tests.hostid.retention_world import PRICE, RETENTION_MS, SLA, World
from tests.support.ledger_carrier_world import (
    CLIENT,
    DEPOSIT,
    PORT,
    SERVER,
    Host,
    bridge_threads,
    echo_exchange,
    server_in_thread,
)
from tests.support.ledger_faults import impair
from tests.support.pairs import CLIENT_ID, SERVER_ID
from tests.support.polling import wait_for


def conserved(ledger: LocalLedger) -> bool:
    a = ledger.audit()
    return bool(a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"])


def retained_events(ledger: LocalLedger, connection: str) -> list[dict[str, Any]]:
    events, _ = ledger.events(filter=EventFilter(type="RecordRetained"), limit=1_000_000)
    return [dict(e.fields) for e in events if e["connection"] == connection]


def deposits_of(ledger: LocalLedger, connection: str, sender: str) -> int:
    return sum(e["deposit"] for e in retained_events(ledger, connection) if e["sender"] == sender)


def all_consumed(ledger: LocalLedger, connection: str) -> bool:
    return all(
        ledger.get_retained_record(e["record"]).consumed
        for e in retained_events(ledger, connection)
    )


class CountingLedger:
    """Passes everything through, counting ``confirm_consumed`` calls per record."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self.confirms: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def confirm_consumed(self, signer: Any, record_id: str) -> None:
        self.confirms[record_id] += 1
        self._ledger.confirm_consumed(signer, record_id)


# -- sans-I/O ----------------------------------------------------------------------------------


def test_retained_data_is_confirmed_and_reclaimed_after_retention(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    ledger = world.ledger
    before = {who: ledger.balance(who.sui_address) for who in (CLIENT_ID, SERVER_ID)}
    c, s, link, cc, sc = world.link(retention_terms=world.terms)
    run_exchange(c, s, link, (40_000, 3_000), seed=11)
    assert link.run(lambda: all_consumed(ledger, world.conn_id), max_time=30)

    events = retained_events(ledger, world.conn_id)
    # data payloads only: SYNCs travel as plain pipe::send and cost no deposit
    data, _ = ledger.events(filter=EventFilter(type="PipeDataSent"), limit=1_000_000)
    assert len(events) == sum(1 for e in data if bytes(e["data"])[0] != KIND_SYNC)
    assert {e["record"] for e in events} == set(cc.retained) | set(sc.retained)
    assert cc.confirmed == len(sc.retained) and sc.confirmed == len(cc.retained)
    client_deposits = deposits_of(ledger, world.conn_id, CLIENT_ID.sui_address)
    server_deposits = deposits_of(ledger, world.conn_id, SERVER_ID.sui_address)
    assert client_deposits > 40_000 * PRICE and server_deposits > 40_000 * PRICE
    assert ledger.balance(CLIENT_ID.sui_address) == before[CLIENT_ID] - client_deposits
    assert ledger.audit()["escrows"] >= client_deposits + server_deposits
    assert conserved(ledger)

    # before the retention time: nothing is deletable, and the ledger says why
    with pytest.raises(PaymentModelError) as err:
        ledger.delete_retained(CLIENT_ID, cc.retained[0])
    assert err.value.name == "ERetentionNotElapsed"
    assert cc.reclaim_storage() == 0 and len(cc.retained) == sc.confirmed

    ledger.advance_clock(RETENTION_MS)
    assert cc.reclaim_storage() == client_deposits
    assert cc.retained == [] and cc.reclaimed == client_deposits
    assert ledger.balance(CLIENT_ID.sui_address) == before[CLIENT_ID]
    assert cc.reclaim_storage() == 0  # nothing twice
    # the server reclaims by events alone (no carrier state), once
    assert reclaim_retained(ledger, SERVER_ID, world.conn_id) == server_deposits
    assert reclaim_retained(ledger, SERVER_ID, world.conn_id) == 0
    assert ledger.balance(SERVER_ID.sui_address) == before[SERVER_ID]
    assert conserved(ledger)


def test_unconsumed_records_stay_and_receiver_is_checked(tmp_path: Path) -> None:
    """A record nobody confirmed is kept until twice its retention time has passed;
    only the receiver confirms; confirming twice is skipped, not an error."""
    world = World(tmp_path / "ledger.db")
    ledger = world.ledger
    cc = LedgerCarrier(
        ledger,
        CLIENT_ID,
        world.conn_id,
        peer_address=SERVER_ID.sui_address,
        retention_terms=world.terms,
        clock=frozen_clock,
    )
    cc.send([bytes(100)])
    (record,) = cc.retained
    assert ledger.get_retained_record(record).deposit == 101 * PRICE  # kind byte included
    ledger.advance_clock(2 * RETENTION_MS - 1)  # 1 ms before the sender may reclaim
    assert cc.reclaim_storage() == 0 and cc.retained == [record]
    with pytest.raises(NotAuthorized) as denied:
        confirm_records(ledger, CLIENT_ID, [record])  # the sender is not the receiver
    assert denied.value.name == "ENotReceiver"
    assert confirm_retained(ledger, CLIENT_ID, world.conn_id) == 0  # not addressed to it
    assert confirm_retained(ledger, SERVER_ID, world.conn_id) == 1
    assert confirm_records(ledger, SERVER_ID, [record, record]) == 0  # already: skipped
    # a carrier resumed from a snapshot still knows its records
    resumed = LedgerCarrier(
        ledger, CLIENT_ID, world.conn_id, peer_address=SERVER_ID.sui_address, state=cc.state()
    )
    assert resumed.pipe_id == cc.pipe_id and resumed.retained == [record]
    assert resumed.reclaim_storage() == 101 * PRICE
    assert resumed.retained == [] and cc.reclaim_storage() == 0
    assert confirm_records(ledger, SERVER_ID, [record]) == 0  # deleted: skipped
    assert conserved(ledger)


def test_an_unconfirmed_record_comes_back_after_twice_its_retention_time(
    tmp_path: Path,
) -> None:
    """The receiver never confirms (gone, or holding the deposit hostage): once twice
    the retention time has passed the sender deletes its records anyway, with a carrier
    (reclaim_storage) or by events alone (reclaim_retained), and gets every deposit
    back: no deposit stays for good."""
    world = World(tmp_path / "ledger.db")
    ledger = world.ledger
    before = ledger.balance(CLIENT_ID.sui_address)
    cc = LedgerCarrier(
        ledger,
        CLIENT_ID,
        world.conn_id,
        peer_address=SERVER_ID.sui_address,
        retention_terms=world.terms,
        clock=frozen_clock,
    )
    cc.send([bytes(100), bytes(50)])
    first, second = cc.retained
    record = ledger.get_retained_record(first)
    assert record.reclaim_after_ms == record.stored_at_ms + 2 * RETENTION_MS
    ledger.advance_clock(2 * RETENTION_MS)
    assert not record.consumed and record.deletable_at(ledger.clock_ms())
    assert reclaim_retained(ledger, CLIENT_ID, world.conn_id) == (101 + 51) * PRICE
    assert cc.reclaim_storage() == 0 and cc.retained == []  # (gone: dropped, not counted)
    assert ledger.balance(CLIENT_ID.sui_address) == before
    assert confirm_records(ledger, SERVER_ID, [first, second]) == 0  # deleted: skipped
    assert conserved(ledger)


def test_records_are_kept_only_while_the_connection_is_open(tmp_path: Path) -> None:
    """Once the connection is closed on the ledger (here the client half-closed it),
    retention::send refuses to keep a record (EConnectionNotOpen); the carrier's data
    payloads -- its last ones, a CLOSE -- then go as plain pipe sends, with no deposit,
    rather than failing."""
    world = World(tmp_path / "ledger.db")
    ledger = world.ledger
    cc = LedgerCarrier(
        ledger,
        CLIENT_ID,
        world.conn_id,
        peer_address=SERVER_ID.sui_address,
        retention_terms=world.terms,
        clock=frozen_clock,
    )
    cc.send([bytes(10)])
    assert len(cc.retained) == 1 and not cc.retention_over
    ledger.close_connection(CLIENT_ID, world.conn_id)
    before = ledger.balance(CLIENT_ID.sui_address)
    cc.send([bytes(20), bytes(30)])
    assert cc.retention_over and len(cc.retained) == 1
    assert cc.payloads_sent == 3
    assert ledger.balance(CLIENT_ID.sui_address) == before  # no deposit taken
    sent, _ = ledger.events(filter=EventFilter(type="PipeDataSent"), limit=1_000)
    assert len(sent) == 3
    assert conserved(ledger)


def test_terms_of_another_service_are_refused(tmp_path: Path) -> None:
    world = World(tmp_path / "ledger.db")
    world.ledger.add_service(SERVER_ID, world.host, PORT + 1, "raw", SLA)
    other = world.ledger.create_retention_terms(SERVER_ID, world.host, PORT + 1, 1, 1)
    cc = LedgerCarrier(
        world.ledger,
        CLIENT_ID,
        world.conn_id,
        peer_address=SERVER_ID.sui_address,
        retention_terms=other,
    )
    with pytest.raises(WrongObject):
        cc.send([b"x" * 20])
    assert cc.retained == []
    assert conserved(world.ledger)


def test_loss_and_duplicates_confirm_each_record_once(tmp_path: Path) -> None:
    """Lost data events are given up (the connection retransmits; the record is still
    confirmed), duplicated ones are confirmed once: every deposit comes back."""
    world = World(tmp_path / "ledger.db")
    ledger = world.ledger
    impaired = ImpairedLedger(ledger, seed=4, loss=0.1, duplicate=0.2, reorder=0.3)
    counting = CountingLedger(impaired)
    c, s, link, cc, sc = world.link(counting, retention_terms=world.terms, gap_timeout=0.5)
    run_exchange(c, s, link, (300_000, 2_000), seed=4)
    assert link.run(lambda: all_consumed(ledger, world.conn_id), max_time=60)
    assert impaired.dropped > 0 and cc.duplicates + sc.duplicates > 0
    assert cc.gaps_given_up + sc.gaps_given_up > 0
    assert set(counting.confirms.values()) == {1}
    assert set(counting.confirms) == set(cc.retained) | set(sc.retained)
    cc.close()
    sc.close()
    ledger.advance_clock(RETENTION_MS)
    client_deposits = deposits_of(ledger, world.conn_id, CLIENT_ID.sui_address)
    assert cc.reclaim_storage() == client_deposits
    assert reclaim_retained(ledger, SERVER_ID, world.conn_id) == deposits_of(
        ledger, world.conn_id, SERVER_ID.sui_address
    )
    assert ledger.audit()["escrows"] == 1000  # only the connection's escrow is left
    assert conserved(ledger)


# -- through the socket bridge ---------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """A host with no published endpoint and an echo service on a LocalLedger file
    (wall clock); client and host authority funded."""
    path = tmp_path / "ledger.db"
    ledger = LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    try:
        yield Host(path, ledger, host_id)
    finally:
        ledger.close()


def _retention_host(host: Host) -> LedgerCarrierOptions:
    host.ledger.faucet(SERVER.sui_address, 2_000_000)
    terms = host.ledger.create_retention_terms(SERVER, host.host_id, PORT, RETENTION_MS, PRICE)
    return LedgerCarrierOptions(retention_terms=terms)


def _retained_echo(host: Host, payload: bytes, options: LedgerCarrierOptions) -> str:
    with server_in_thread(host, ledger_options=options):
        sock = dtp.socket.create_connection(
            host.address,
            timeout=LEDGER_HANDSHAKE_TIMEOUT,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            ledger_options=options,
        )
        assert echo_exchange(sock, payload) == payload
        sock.close()
        assert wait_for(lambda: not bridge_threads(), 30)
    return sock.connection_id


def _check_reclaim(ledger: LocalLedger, cid: str, before: dict[Any, int]) -> None:
    """Everything confirmed; nothing deletable before the retention time; afterwards
    each side reclaims exactly its deposits and the balances are whole again."""
    events = retained_events(ledger, cid)
    assert {e["sender"] for e in events} == {CLIENT.sui_address, SERVER.sui_address}
    assert all_consumed(ledger, cid)
    deposits = {who: deposits_of(ledger, cid, who.sui_address) for who in (CLIENT, SERVER)}
    mine = next(e["record"] for e in events if e["sender"] == CLIENT.sui_address)
    with pytest.raises(PaymentModelError) as err:
        ledger.delete_retained(CLIENT, mine)
    assert err.value.name == "ERetentionNotElapsed"
    assert reclaim_retained(ledger, CLIENT, cid) == 0
    assert conserved(ledger)
    ledger.advance_clock(RETENTION_MS)
    for who in (CLIENT, SERVER):
        assert reclaim_retained(ledger, who, cid) == deposits[who] > 0
        assert reclaim_retained(ledger, who, cid) == 0
    assert ledger.balance(CLIENT.sui_address) == before[CLIENT] - DEPOSIT
    assert ledger.balance(SERVER.sui_address) == before[SERVER]
    assert conserved(ledger)


def test_echo_with_retention_through_the_bridge(host: Host) -> None:
    options = _retention_host(host)
    ledger = host.ledger
    before = {who: ledger.balance(who.sui_address) for who in (CLIENT, SERVER)}
    cid = _retained_echo(host, random.Random(5).randbytes(200_000), options)
    _check_reclaim(ledger, cid, before)


def test_retention_with_loss_and_duplicates_through_the_bridge(host: Host) -> None:
    """Both carriers read through a faulty ledger edge: the bytes come back, every
    record is confirmed exactly once, and every deposit comes back."""
    options = _retention_host(host)
    wrap, wrappers = impair(seed=21, loss=0.1, duplicate=0.15, reorder=0.3)
    counters: list[CountingLedger] = []

    def counted(ledger: Any) -> Any:
        counters.append(CountingLedger(wrap(ledger)))
        return counters[-1]

    options = replace(options, ledger_filter=counted, gap_timeout=0.3)
    ledger = host.ledger
    # every retransmission is a retained send with a deposit of its own, held for the
    # retention time, and how many there are depends on the machine's load (timers):
    # both sides get room for several times the payload
    for who in (CLIENT, SERVER):
        ledger.faucet(who.sui_address, 8_000_000)
    before = {who: ledger.balance(who.sui_address) for who in (CLIENT, SERVER)}
    cid = _retained_echo(host, random.Random(6).randbytes(300_000), options)
    assert sum(w.dropped for w in wrappers) > 0 and sum(w.duplicated for w in wrappers) > 0
    confirms = sum((c.confirms for c in counters), Counter[str]())
    assert set(confirms.values()) == {1}
    assert set(confirms) == {e["record"] for e in retained_events(ledger, cid)}
    _check_reclaim(ledger, cid, before)


def test_a_closing_bridge_reclaims_what_is_already_deletable(host: Host) -> None:
    """With no retention time, records consumed when a bridge ends are deleted by it;
    the rest (confirmed after its end) by reclaim_retained later."""
    host.ledger.faucet(SERVER.sui_address, 2_000_000)
    terms = host.ledger.create_retention_terms(SERVER, host.host_id, PORT, 0, PRICE)
    options = LedgerCarrierOptions(retention_terms=terms)
    ledger = host.ledger
    before = {who: ledger.balance(who.sui_address) for who in (CLIENT, SERVER)}
    cid = _retained_echo(host, random.Random(7).randbytes(100_000), options)
    records = {e["record"] for e in retained_events(ledger, cid)}
    deleted, _ = ledger.events(filter=EventFilter(type="RecordDeleted"), limit=100_000)
    auto = {e["record"] for e in deleted} & records
    assert auto and sum(e["refunded"] for e in deleted if e["record"] in auto) > 0
    rest = sum(reclaim_retained(ledger, who, cid) for who in (CLIENT, SERVER))
    assert rest == sum(
        e["deposit"] for e in retained_events(ledger, cid) if e["record"] not in auto
    )
    assert ledger.balance(CLIENT.sui_address) == before[CLIENT] - DEPOSIT
    assert ledger.balance(SERVER.sui_address) == before[SERVER]
    assert conserved(ledger)


def test_the_records_offered_are_remembered_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set of records offered for confirmation grew for a connection's whole life;
    only the newest MAX_OFFERED_RETAINED are kept now, and every record is still
    confirmed once."""
    import dtp.hostid.ledger_carrier._carrier as retention_module

    monkeypatch.setattr(retention_module, "MAX_OFFERED_RETAINED", 8)
    world = World(tmp_path / "ledger.db")
    counting = CountingLedger(world.ledger)
    c, s, link, cc, sc = world.link(ledger=counting, retention_terms=world.terms)
    run_exchange(c, s, link, (80_000, 6_000), seed=5)  # (more than 16 records)
    assert link.run(lambda: all_consumed(world.ledger, world.conn_id), max_time=30)
    assert len(cc.retained) + len(sc.retained) > 16
    assert len(sc._offered) <= 8 and len(cc._offered) <= 8
    assert sc.peer_retains and cc.peer_retains
    assert set(counting.confirms.values()) == {1}
    assert len(counting.confirms) == len(cc.retained) + len(sc.retained)
