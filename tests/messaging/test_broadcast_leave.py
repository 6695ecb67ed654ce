"""The way out of an idle broadcast through the messaging layer (docs/escrow.md §9,
docs/messaging.md §5): a station that sends keeps its broadcast live on the ledger with
heartbeats, so its listeners cannot leave it; one that stops lets them leave, each with
the value of its shares, once the idle bound has passed. A station and a listener over
a real DTP connection, on a LocalLedger file whose clock the test moves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.errors import BroadcastError
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.broadcast import BroadcastListener, BroadcastMessage, BroadcastStation
from tests.messaging.radio import CASTERS, FANS, PRICE, SLOT_MS, Radio, radio_on_air

#: The idle bound of the radio's broadcast: its slots are short, so ten minutes.
IDLE_MS = 600_000


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    yield ledger
    ledger.close()


@pytest.fixture
def radio(ledger: LocalLedger) -> Iterator[Radio]:
    yield from radio_on_air(ledger)


def _live_ms(ledger: LocalLedger, b_id: str, at_least: int) -> int:
    """The broadcast's ``last_live_ms`` once it reaches ``at_least`` (a heartbeat runs in
    a thread of the station's), or as it is after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        live = ledger.get_broadcast(b_id).last_live_ms
        if live >= at_least or time.monotonic() > deadline:
            return live
        time.sleep(0.01)


def _send(station: BroadcastStation, payload: bytes, listener: BroadcastListener) -> None:
    station.send(payload)
    item = listener.get(timeout=30)
    while not isinstance(item, BroadcastMessage):  # (AIR frames first)
        item = listener.get(timeout=30)
    assert item.payload == payload


def test_a_sending_station_keeps_its_listeners(radio: Radio) -> None:
    """Sends past half the idle bound record a heartbeat: the listener's way out moves
    to the bound after it, and opens there once the station has gone quiet."""
    ledger, b_id = radio.ledger, radio.b_id
    station = BroadcastStation(ledger, CASTERS[0], b_id)
    listener = radio.tune_in(station)
    fan = FANS[1].sui_address
    try:
        assert ledger.get_broadcast(b_id).idle_ms == IDLE_MS
        listener.contribute(1_000 * PRICE)
        ledger.set_clock(10)
        _send(station, b"early", listener)
        assert ledger.get_broadcast(b_id).last_live_ms == 0  # not due yet: no transaction
        assert listener.leave_opens_ms() == IDLE_MS
        ledger.set_clock(IDLE_MS // 2 + 10)
        _send(station, b"half way", listener)
        assert _live_ms(ledger, b_id, IDLE_MS // 2 + 10) == IDLE_MS // 2 + 10
        assert listener.leave_opens_ms() == IDLE_MS + IDLE_MS // 2 + 10
        # where the bound from the creation would have opened the way out, it is shut
        ledger.set_clock(IDLE_MS + 10)
        with pytest.raises(BroadcastError) as refused:
            listener.leave()
        assert refused.value.name == "EBroadcastLive"
        # the station goes quiet: the way out opens one bound after its heartbeat
        opens = IDLE_MS + IDLE_MS // 2 + 10
        ledger.set_clock(opens)
        value = listener.refund_value()
        slots = opens // SLOT_MS  # every slot so far was covered and is paid first
        assert value == 1_000 * PRICE - slots * PRICE
        before = ledger.balance(fan)
        assert listener.leave() == value
        assert ledger.balance(fan) == before + value
        assert listener.refund_value() == 0 and listener.leave_opens_ms() == opens
        assert station.claim() == slots * PRICE
        b = ledger.get_broadcast(b_id)
        assert b.pool == 0 and not b.stakes and b.holders == 0
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        listener.close()
        station.close()


def test_a_station_without_keep_alive_lets_listeners_leave(radio: Radio) -> None:
    """``keep_alive=False``: sends record nothing, and the bound counts from the creation."""
    ledger, b_id = radio.ledger, radio.b_id
    station = BroadcastStation(ledger, CASTERS[0], b_id, keep_alive=False)
    listener = radio.tune_in(station)
    try:
        listener.contribute(1_000 * PRICE)
        for at in (10, IDLE_MS // 2 + 10, IDLE_MS - 10):
            ledger.set_clock(at)
            _send(station, b"unrecorded", listener)
        assert ledger.get_broadcast(b_id).last_live_ms == 0
        ledger.set_clock(IDLE_MS)
        assert listener.leave() == 1_000 * PRICE - (IDLE_MS // SLOT_MS) * PRICE
    finally:
        listener.close()
        station.close()


def test_heartbeat_needs_the_pool_to_cover_the_slot(radio: Radio) -> None:
    """A station off air cannot say it is transmitting: an exhausted pool always leads to
    the way out. After a cancel, listeners withdraw rather than leave."""
    ledger, b_id = radio.ledger, radio.b_id
    station = BroadcastStation(ledger, CASTERS[0], b_id)
    listener = radio.tune_in(station)
    try:
        with pytest.raises(BroadcastError) as off_air:
            station.heartbeat()
        assert off_air.value.name == "ENotOnAir"
        listener.contribute(3 * PRICE)
        ledger.set_clock(10)
        station.heartbeat()
        assert ledger.get_broadcast(b_id).last_live_ms == 10
        ledger.set_clock(3 * SLOT_MS)  # the three slots are spent
        with pytest.raises(E.OffAir):
            station.send(b"no pool")
        with pytest.raises(BroadcastError):
            station.heartbeat()
        station.cancel()
        assert listener.leave_opens_ms() is None
        with pytest.raises(BroadcastError) as cancelled:
            listener.leave()
        assert cancelled.value.name == "EBroadcastCancelled"
        assert listener.withdraw() == 0
    finally:
        listener.close()
        station.close()
