"""LocalLedger against the Move package: its clock, epochs and adversarial input.

Every test runs on a real SQLite file, most of them with a second handle on the same
file reading back what the first one wrote.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.ledger.local._store as local
from dtp.errors import InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import MAX_PURE_BYTES, Sla
from dtp.ledger.local import CLOCK_MAX_MS, LocalLedger
from dtp.ledger.local._tx import Address

U64_MAX = 2**64 - 1


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


ALICE, BOB = ident(0x41), ident(0x42)
NOISE_KEY = b"\x09" * 32


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def ledgers(path: Path) -> Iterator[tuple[LocalLedger, LocalLedger]]:
    first = LocalLedger(path, clock_ms=1_000)
    second = LocalLedger(path)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _conserved(ledger: LocalLedger) -> bool:
    audit = ledger.audit()
    return audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


# -- the clock ends where SQLite's INTEGER does -----------------------------------------------
#
# Every event stores its time in a signed 64-bit INTEGER column. The clock took any u64,
# so a clock at 2**63 or later made every transaction that emits an event (nearly all)
# fail with a bare OverflowError from sqlite3, and advance_clock could carry the clock
# past 2**64-1, which no Move u64 can hold.


@pytest.mark.parametrize("ms", [CLOCK_MAX_MS + 1, U64_MAX])
def test_a_clock_past_what_events_store_is_refused(
    ledgers: tuple[LocalLedger, LocalLedger], path: Path, ms: int
) -> None:
    first, second = ledgers
    with pytest.raises(InvalidArgument, match="the clock"):
        first.set_clock(ms, allow_backwards=True)
    with pytest.raises(InvalidArgument, match="clock_ms"):
        LocalLedger(path, clock_ms=ms)
    assert second.clock_ms() == 1_000
    # and the ledger still runs transactions
    second.faucet(ALICE.sui_address, 10)
    cap = second.create_spending_cap(ALICE, 5)
    assert first.get_cap(cap).max_per_epoch == 5


def test_transactions_run_at_the_last_time_the_clock_can_show(
    ledgers: tuple[LocalLedger, LocalLedger],
) -> None:
    first, second = ledgers
    first.set_clock(CLOCK_MAX_MS)
    cap = second.create_spending_cap(ALICE, 7)
    events, _ = first.events()
    created = [e for e in events if e.name == "SpendingCapCreated"]
    assert [e["cap"] for e in created] == [cap]
    assert created[0].timestamp_ms == CLOCK_MAX_MS


def test_advance_clock_cannot_pass_the_end(ledgers: tuple[LocalLedger, LocalLedger]) -> None:
    first, second = ledgers
    first.set_clock(CLOCK_MAX_MS - 10)
    for step in (11, U64_MAX):
        with pytest.raises(InvalidArgument, match="advance"):
            second.advance_clock(step)
        assert first.clock_ms() == CLOCK_MAX_MS - 10  # nothing moved
    assert second.advance_clock(10) == CLOCK_MAX_MS
    second.faucet(BOB.sui_address, 1)
    second.create_spending_cap(BOB, 1)
    assert first.clock_ms() == CLOCK_MAX_MS


def test_a_wall_clock_stops_at_the_end(ledgers: tuple[LocalLedger, LocalLedger]) -> None:
    """Unfrozen at the last time, the wall moves on but the clock does not pass it, and
    transactions keep running (they raised OverflowError once a millisecond passed)."""
    first, second = ledgers
    first.set_clock(CLOCK_MAX_MS)
    first.unfreeze_clock()
    time.sleep(0.02)  # let the wall clock move on by a few milliseconds
    assert second.clock_ms() == CLOCK_MAX_MS
    cap = second.create_spending_cap(ALICE, 3)
    events, _ = first.events()
    assert [e.timestamp_ms for e in events if e.name == "SpendingCapCreated"] == [CLOCK_MAX_MS]
    assert first.get_cap(cap).owner == ALICE.sui_address
    with pytest.raises(InvalidArgument, match="advance"):
        first.advance_clock(1)


# -- a String argument is one pure argument on Sui --------------------------------------------
#
# Sui refuses a pure argument of 16384 bytes or more before any Move code runs, so a
# service kind or a channel name of more than 16381 bytes never reaches the Move code
# (dtp.ledger.sui._tx refuses it with InvalidArgument). No Move check bounds a String, and
# LocalLedger stored such a kind or channel: a call Sui refuses succeeded here.


def test_a_service_kind_longer_than_a_pure_argument_is_refused(
    ledgers: tuple[LocalLedger, LocalLedger],
) -> None:
    first, second = ledgers
    host = first.create_host(ALICE, NOISE_KEY)
    version = second.object_version(host)
    with pytest.raises(InvalidArgument, match="pure argument"):
        first.add_service(ALICE, host, 7, "k" * (MAX_PURE_BYTES + 1), Sla(1, 1, 0))
    assert second.get_host(host).services == {}
    assert second.object_version(host) == version
    # the longest one a transaction can carry is taken
    second.add_service(ALICE, host, 7, "k" * MAX_PURE_BYTES, Sla(1, 1, 0))
    assert len(first.get_host(host).services[7].kind) == MAX_PURE_BYTES


def test_a_channel_longer_than_a_pure_argument_is_refused(
    ledgers: tuple[LocalLedger, LocalLedger],
) -> None:
    first, second = ledgers
    before = second.objects("Broadcast")
    with pytest.raises(InvalidArgument, match="pure argument"):
        first.create_broadcast(BOB, "c" * (MAX_PURE_BYTES + 1), 5, 1_000)
    assert second.objects("Broadcast") == before
    b = second.create_broadcast(BOB, "c" * MAX_PURE_BYTES, 5, 1_000)
    assert len(first.get_broadcast(b).channel) == MAX_PURE_BYTES


def test_raw_transaction_with_an_oversized_string_changes_nothing(
    ledgers: tuple[LocalLedger, LocalLedger],
) -> None:
    """Through execute(): refused before the rule runs, the nonce left unused."""
    first, second = ledgers
    first.faucet(ALICE.sui_address, 100)
    dump = second.dump()
    raw = first.build_tx(
        ALICE.sui_address, "broadcast", "create", [b"x" * (MAX_PURE_BYTES + 1), 5, 1_000]
    )
    with pytest.raises(InvalidArgument, match="pure argument"):
        first.execute(raw, ALICE.sign_transaction(raw))
    assert second.dump() == dump
    assert _conserved(second)
    ok = second.build_tx(ALICE.sui_address, "broadcast", "create", [b"x" * 3, 5, 1_000])
    result = second.execute(ok, ALICE.sign_transaction(ok))
    assert first.get_broadcast(str(Address(result.value))).channel == "xxx"


# -- advance_clock in wall mode ---------------------------------------------------------------
#
# In wall mode advance_clock moves the clock its step past what it reads now, its floor
# (the time of the last transaction) included: after the wall clock stepped back (a VM
# resumed, a clock corrected) by more than the step, advance_clock(HALF_CLOSE_TIMEOUT_MS)
# still returns a time that much later, and a finalize right after it is not refused
# with ETimeoutNotReached.


def test_advance_clock_moves_on_after_the_wall_clock_stepped_back(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState

    with LocalLedger(path) as first, LocalLedger(path) as second:
        assert not first.clock_frozen()
        host = first.create_host(ALICE, NOISE_KEY)
        first.add_service(ALICE, host, 7, "raw", Sla(1, 1, 0))
        first.faucet(BOB.sui_address, 1_000)
        cap = second.create_spending_cap(BOB, 1_000)
        opened = second.open_connection(BOB, host, 7, cap, 100)
        second.close_connection(BOB, opened.connection_id)
        events, _ = first.events()
        half_closed_at = next(e for e in events if e.name == "ConnectionHalfClosed")["at_ms"]

        # the wall clock steps back an hour: something no test can make the machine do
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() - 3_600 * 10**9)
        assert second.clock_ms() >= half_closed_at  # held by the floor
        now = first.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        assert now >= half_closed_at + HALF_CLOSE_TIMEOUT_MS
        assert second.clock_ms() >= now
        second.finalize(BOB, opened.connection_id)
        assert first.get_connection(opened.connection_id).state is ConnectionState.CLOSED
        settlement = second.settle(BOB, opened.connection_id)
        assert settlement.refunded == 100
        assert first.balance(BOB.sui_address) == 1_000
        assert _conserved(first)


# -- objects(type_name) -----------------------------------------------------------------------


@pytest.mark.parametrize("type_name", [5, b"Broadcast", ["Broadcast"]])
def test_objects_refuses_a_type_name_that_is_not_text(
    ledgers: tuple[LocalLedger, LocalLedger], type_name: object
) -> None:
    """It answered [] (no struct name equals a non-str), as if there were no objects."""
    first, second = ledgers
    b = first.create_broadcast(ALICE, "news", 5, 1_000)
    with pytest.raises(InvalidArgument, match="type_name"):
        second.objects(type_name)  # type: ignore[arg-type]
    assert [ref.object_id for ref in second.objects("Broadcast")] == [b]


# -- a Host and Sui's object size limit ---------------------------------------------------------
#
# Sui fails a transaction that leaves a Move object over max_move_object_size (250 KiB of
# BCS contents). A Host's services are a Table beside it, each an object of its own, so
# neither the Host nor any entry can reach the limit; LocalLedger's size rule follows
# that layout (and once let a Host grow without limit, succeeding where Sui failed).

MAX_OBJECT = 250 * 1024


def _host_size(ledger: LocalLedger, host: str) -> int:
    """The Host's BCS contents, by the codec SuiLedger reads Hosts with."""
    from dtp.ledger.sui import _codec as sui_codec

    return len(sui_codec.encode_object(ledger.get_host(host)))


def test_a_host_does_not_grow_with_its_services(
    ledgers: tuple[LocalLedger, LocalLedger],
) -> None:
    from dtp.ledger.local.rules import host_bcs_size
    from dtp.ledger.local.rules._host import service_field_bcs_size
    from dtp.ledger.sui import _codec as sui_codec

    first, second = ledgers
    host = first.create_host(ALICE, NOISE_KEY)
    empty = _host_size(second, host)
    big = "k" * MAX_PURE_BYTES
    # twenty services of the longest kind: 320 KiB, which a Host holding them inline
    # (a VecMap) could not hold
    for port in range(1, 21):
        (first, second)[port % 2].add_service(ALICE, host, port, big, Sla(1, 1, 0))
    read = second.get_host(host)
    assert sorted(read.services) == list(range(1, 21))
    assert _host_size(second, host) == empty
    # the largest Host there is: sixteen endpoints of 256 bytes
    first.set_endpoints(ALICE, host, [b"x" * 256] * 16)
    largest = first.get_host(host)
    assert _host_size(first, host) == 32 + 8 + 32 + 33 + 1 + 16 * 258 + 40 + 1 + 80 + 24
    assert _host_size(first, host) < MAX_OBJECT // 50
    # LocalLedger's size rule reads the same layout, and so sizes each service's entry
    data = {
        "noise_static_key": largest.noise_static_key,
        "endpoints": list(largest.endpoints),
        "services": {str(p): {} for p in largest.services},
    }
    assert host_bcs_size(data) == _host_size(first, host)
    service = {"kind": big, "sla": Sla(1, 1, 0).to_fields(), "max_connections": 0}
    entry = 32 + 2 + len(sui_codec.encode(sui_codec.SERVICE_LAYOUT, service))
    assert service_field_bcs_size(service) == entry < MAX_OBJECT // 15
    # and what grew it no more still runs: a service removed, updated, the lists used
    second.remove_service(ALICE, host, 1)
    first.update_service(ALICE, host, 20, Sla(2, 2, 0), 3)
    first.allow(ALICE, host, BOB.sui_address)
    assert second.firewall_list(host, "allow") == (BOB.sui_address,)
    assert 1 not in second.get_host(host).services
    assert second.get_host(host).services[20].max_connections == 3


HOUR_MS = 3_600_000


def _step_wall_clock_back(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    """The machine's clock cannot be stepped in a test: the ledger's one reader of it is."""
    real = local._wall_ms
    monkeypatch.setattr(local, "_wall_ms", lambda: real() - ms)


def test_clock_reads_do_not_go_back_when_the_wall_clock_steps_back(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalLedger(path) as ledger:
        assert not ledger.clock_frozen()
        first = ledger.clock_ms()  # served, not saved: no transaction has run yet
        _step_wall_clock_back(monkeypatch, HOUR_MS)
        second = ledger.clock_ms()
        assert second >= first  # (the wall clock reads an hour earlier now)
        assert ledger.clock_ms() >= second


def test_a_transaction_after_the_wall_clock_stepped_back_saves_no_earlier_time(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalLedger(path) as ledger:
        served = ledger.clock_ms()
        _step_wall_clock_back(monkeypatch, HOUR_MS)
        ledger.create_host(ALICE, b"\x09" * 32)
        events, _ = ledger.events()
        (created,) = [e for e in events if e.name == "HostCreated"]
        assert created.timestamp_ms >= served  # (not by the wall clock, an hour back)
        # saved with the transaction: another handle (another process) reads no earlier
        with LocalLedger(path) as other:
            assert other.clock_ms() >= created.timestamp_ms


def test_a_clock_set_back_on_purpose_is_not_held_by_earlier_reads(path: Path) -> None:
    with LocalLedger(path) as ledger:
        assert ledger.clock_ms() > 10 * HOUR_MS  # wall time: decades since the epoch
        ledger.set_clock(1_000, allow_backwards=True)
        ledger.unfreeze_clock()
        assert ledger.clock_ms() < HOUR_MS  # goes on from 1 s, not from the reads before
