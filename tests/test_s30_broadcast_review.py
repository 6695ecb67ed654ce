"""Broadcast and discovery, session 30 review (docs/messaging.md §5, §6):

1. Discovery: a full cache took an announcement in, then evicted the soonest to expire,
   which could be that one: counted accepted and returned by ``receive`` (recorded,
   said ``announce``), it was gone at once. Anyone could fill the cache with day-long
   announcements and every genuine host was dropped on arrival. Now it is refused
   (``evicted``), and ``announce`` makes room for the node's own.
2. Each TIP frame cost the station a ledger read, even one signed by a fresh key (free
   to make) and refused; reads now begin at most every ``_TIP_READ_GAP`` and serve every
   tip waiting, and a tip is still checked on a read begun after it arrived.
3. Past its slack, a listener dropped the newest AirChange: the application ended on a
   stale air state. It now replaces the newest queued one.
4. A default link name counted the links open, so a newcomer took the name of a
   listener still there once another had left.
5. Listener waits and the station monitor's interval took NaN, inf or a str unchecked.
6. A damaged tip state file raised bare JSON / UTF-8 / ValueErrors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Broadcast
from dtp.keys import HostIdentity
from dtp.messaging import broadcast as broadcast_module
from dtp.messaging import errors as E
from dtp.messaging.broadcast import (
    AIR,
    MESSAGE,
    TIP,
    AirChange,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
    signed_message,
    signed_tip,
)
from dtp.messaging.discovery import DiscoveryGossip, encode_announcement
from dtp.messaging.framing import encode_frame
from dtp.messaging.pubsub import PubSubNode
from tests.polling import raised_within, wait_for
from tests.test_messaging_broadcast import World, hello_frame, world  # noqa: F401

PROMPT = 30.0
DAY_MS = 24 * 3600 * 1000
HOST = "0x" + "ab" * 32


# -- 1. discovery: a full cache --------------------------------------------------------------------


@pytest.fixture
def node() -> Iterator[PubSubNode]:
    n = PubSubNode("n")
    yield n
    n.close()


def _filled(node: PubSubNode, now: int, ttl_ms: int = DAY_MS) -> DiscoveryGossip:
    """A gossip whose cache (4 records) is full of one stranger's ``ttl_ms``-long
    announcements (no ledger: anyone's are taken)."""
    gossip = DiscoveryGossip(node, clock_ms=lambda: now, max_records=4)
    stranger = HostIdentity.generate()
    for i in range(4):
        data = encode_announcement(stranger, f"junk{i}", [(1, "x")], [], now, ttl_ms)
        assert gossip.receive(data) is not None
    return gossip


def test_a_full_cache_refuses_what_it_would_evict_at_once(node: PubSubNode) -> None:
    now = 1_000_000
    gossip = _filled(node, now)
    try:
        genuine = encode_announcement(
            HostIdentity.generate(), HOST, [(443, "web")], [], now, 600_000
        )
        # the old cache said "accepted" and returned it, already evicted
        assert gossip.receive(genuine) is None
        assert (gossip.accepted, gossip.evicted) == (4, 1)
        assert gossip.host(HOST) is None
        assert sorted(r.host_id for r in gossip.lookup()) == [f"junk{i}" for i in range(4)]
    finally:
        gossip.close()


def test_an_announcement_that_outlives_the_soonest_pushes_it_out(node: PubSubNode) -> None:
    now = 1_000_000
    gossip = _filled(node, now, ttl_ms=600_000)
    try:
        data = encode_announcement(HostIdentity.generate(), HOST, [(443, "web")], [], now, DAY_MS)
        assert gossip.receive(data) is not None
        assert gossip.evicted == 1 and gossip.host(HOST) is not None
        assert len(gossip.lookup()) == 4
    finally:
        gossip.close()


def test_a_cached_hosts_next_announcement_takes_its_own_place(node: PubSubNode) -> None:
    now = 1_000_000
    gossip = DiscoveryGossip(node, clock_ms=lambda: now, max_records=2)
    stranger, host = HostIdentity.generate(), HostIdentity.generate()
    try:
        junk = encode_announcement(stranger, "junk", [(1, "x")], [], now, DAY_MS)
        assert gossip.receive(junk) is not None
        first = encode_announcement(host, HOST, [(443, "web")], [], now, 600_000)
        assert gossip.receive(first) is not None
        # it expires soonest, but replaces its own record: nothing to push out
        second = encode_announcement(host, HOST, [(443, "web2")], [], now + 1, 600_000)
        got = gossip.receive(second)
        assert got is not None and got.services == ((443, "web2"),)
        assert gossip.evicted == 0 and gossip.host("junk") is not None
    finally:
        gossip.close()


def test_announce_records_its_own_announcement_in_a_full_cache(node: PubSubNode) -> None:
    gossip = _filled(node, 1_000_000)  # (announce signs at the gossip's clock)
    try:
        ann = gossip.announce(HostIdentity.generate(), HOST, [(443, "web")], ttl_ms=600_000)
        # recorded before announce() returns, as documented (it was evicted at once)
        assert gossip.host(HOST) == ann
        assert [r.name for r in gossip.lookup("web")] == ["web"]
        assert gossip.evicted == 1 and len(gossip.lookup()) == 4
    finally:
        gossip.close()


def test_announce_says_when_its_announcement_cannot_fit(node: PubSubNode) -> None:
    gossip = DiscoveryGossip(node, max_bytes=64)
    try:
        with pytest.raises(E.DiscoveryError, match="max_bytes=64"):
            gossip.announce(HostIdentity.generate(), HOST, [(443, "web")])
        assert gossip.host(HOST) is None and gossip.evicted == 1
    finally:
        gossip.close()


# -- 2. tips: ledger reads -------------------------------------------------------------------------


class _CountedReads:
    """The world's ledger, counting the station's reads of the broadcast."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.reads = 0

    def get_broadcast(self, broadcast_id: str) -> Broadcast:
        self.reads += 1
        return self._ledger.get_broadcast(broadcast_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def _counted_station(w: World, **kwargs: Any) -> tuple[BroadcastStation, _CountedReads]:
    counted = _CountedReads(w.ledger)
    station = BroadcastStation(counted, w.caster, w.broadcast_id, **kwargs)  # type: ignore[arg-type]
    counted.reads = 0  # (the station's own look-up when made)
    return station, counted


def _stranger_tips(station: BroadcastStation, keys: list[HostIdentity], n: int) -> bytes:
    """``n`` tips of 1 MIST signed by ``keys`` in turn, none of which contributed."""
    frames = []
    for i in range(n):
        key = keys[i % len(keys)]
        tip_id = (time.time_ns() // 1000).to_bytes(8, "big") + os.urandom(8)
        signature = key.sign(signed_tip(station.broadcast_id, station.session, tip_id, 1, ""))
        frames.append(encode_frame([TIP, tip_id, 1, "", key.ed25519_public, signature]))
    return b"".join(frames)


def test_tips_from_fresh_keys_cost_a_bounded_number_of_ledger_reads(world: World) -> None:  # noqa: F811
    w = world
    station, counted = _counted_station(w)
    flood, flooder = w.pair()
    station.attach(flood, "flooder")
    s_side, l_side = w.pair()
    fan = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[0], broadcast_id=w.broadcast_id
    )
    station.attach(s_side, "fan")
    try:
        assert fan.wait_hello(PROMPT)
        keys = [HostIdentity.generate() for _ in range(5)]
        frames = _stranger_tips(station, keys, 100)
        start = time.monotonic()
        flooder.sendall(frames)
        assert wait_for(lambda: station.invalid_tips >= 1, timeout=PROMPT)

        def bound() -> float:  # one read at once, then one per gap at most
            return 2 + (time.monotonic() - start) / broadcast_module._TIP_READ_GAP

        # the old station read the ledger for each of them (100 reads in a blink)
        assert not wait_for(lambda: counted.reads > bound(), timeout=1.5)
        # a genuine tip, its contribution made just before, is still taken meanwhile
        tip_id = fan.tip(7, "love the show")
        tip = station.tips.get(timeout=PROMPT)
        assert (tip.address, tip.amount, tip.tip_id) == (w.fans[0].sui_address, 7, tip_id)
        assert counted.reads <= bound()
    finally:
        fan.close()
        station.close()


def test_a_tip_is_checked_on_a_read_made_after_it_arrived(world: World) -> None:  # noqa: F811
    """The read a stranger's tip caused, just before the fan contributed, is not the one
    the fan's tip is refused on."""
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    stranger, stranger_side = w.pair()
    station.attach(stranger, "stranger")
    s_side, l_side = w.pair()
    fan = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[0], broadcast_id=w.broadcast_id
    )
    station.attach(s_side, "fan")
    try:
        assert fan.wait_hello(PROMPT)
        for round_ in range(1, 4):
            stranger_side.sendall(_stranger_tips(station, [HostIdentity.generate()], 1))
            assert wait_for(lambda n=round_: station.invalid_tips == n, timeout=PROMPT)
            fan.tip(5, f"tip {round_}")
            assert station.tips.get(timeout=PROMPT).message == f"tip {round_}"
        assert station.invalid_tips == 3 and station.tipped == {w.fans[0].sui_address: 15}
    finally:
        fan.close()
        station.close()


def test_a_tippers_covered_tips_share_a_read(world: World) -> None:  # noqa: F811
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1000)
    station, counted = _counted_station(w, inbox_size=100)
    s_side, l_side = w.pair()
    station.attach(s_side, "fan")
    try:
        start = time.monotonic()
        frames = []
        for i in range(50):
            tip_id = (1_000 + i).to_bytes(8, "big") + bytes(8)
            signature = w.fans[0].sign(signed_tip(w.broadcast_id, station.session, tip_id, 1, ""))
            frames.append(encode_frame([TIP, tip_id, 1, "", w.fans[0].ed25519_public, signature]))
        l_side.sendall(b"".join(frames))
        assert wait_for(lambda: station.tips.qsize() == 50, timeout=PROMPT)
        elapsed = time.monotonic() - start
        assert station.invalid_tips == 0
        # (the old station read the ledger once per tip: 50)
        assert counted.reads <= 2 + elapsed / broadcast_module._TIP_READ_TRUST
    finally:
        station.close()


# -- 3. the listener's newest air change -----------------------------------------------------------


def test_the_newest_air_change_reaches_an_application_past_the_slack(world: World) -> None:  # noqa: F811
    w = world
    station_side, l_side = w.pair()
    session = b"\x01" * 16
    listener = BroadcastListener(
        l_side, broadcaster=w.caster.sui_address, broadcast_id=w.broadcast_id, queue_size=1
    )
    try:
        station_side.sendall(hello_frame(w.caster, w.broadcast_id, session))
        assert listener.wait_hello(PROMPT)
        signature = w.caster.sign(signed_message(w.broadcast_id, "radio", session, 1, b"x"))
        frames = [encode_frame([MESSAGE, "radio", 1, b"x", signature])]
        # the station's genuine air history while the application is busy
        for _ in range(9):
            frames.append(encode_frame([AIR, False, "pool exhausted", 2]))
            frames.append(encode_frame([AIR, True, "covered", 2]))
        frames.append(encode_frame([AIR, False, "cancelled", 2]))
        station_side.sendall(b"".join(frames))
        # 1 message and 16 air changes fit; the 3 after each take the newest's place
        assert wait_for(lambda: listener.dropped == 3, timeout=PROMPT)
        items: list[BroadcastMessage | AirChange] = []
        while len(items) < 17:
            items.append(listener.get(timeout=PROMPT))
        assert isinstance(items[0], BroadcastMessage)
        assert all(isinstance(item, AirChange) for item in items[1:])
        # the old listener's last one was "covered": the application stayed on air
        assert items[-1] == AirChange(False, "cancelled", 2)
        assert not listener.on_air
    finally:
        listener.close()


# -- 4. default link names -------------------------------------------------------------------------


def test_a_newcomer_does_not_take_the_name_of_a_listener_still_there(world: World) -> None:  # noqa: F811
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    pairs = [w.pair() for _ in range(3)]
    listeners = [BroadcastListener(l_side, broadcaster=w.caster.sui_address) for _, l_side in pairs]
    try:
        station.attach(pairs[0][0])
        station.attach(pairs[1][0])
        pairs[0][1].abort("the first listener leaves")
        assert wait_for(lambda: station.listeners == 1, timeout=PROMPT)
        station.attach(pairs[2][0])
        for listener in listeners[1:]:
            assert listener.wait_hello(PROMPT)
        listeners[1].request("second")
        assert station.requests.get(timeout=PROMPT).listener == "listener-1"
        listeners[2].request("third")
        # (the old name counted the links open: "listener-1" again)
        assert station.requests.get(timeout=PROMPT).listener == "listener-2"
    finally:
        for listener in listeners:
            listener.close()
        station.close()


# -- 5. waits and intervals ------------------------------------------------------------------------


BAD_WAITS = [
    (float("nan"), ValueError),
    (float("inf"), OverflowError),  # (as socket.settimeout: was ValueError)
    (-1, ValueError),
    ("1", TypeError),
    (True, TypeError),
]


@pytest.mark.parametrize(("timeout", "error"), BAD_WAITS)
def test_listener_waits_check_their_timeouts(
    world: World,  # noqa: F811
    timeout: Any,
    error: type[Exception],
) -> None:
    _, l_side = world.pair()
    listener = BroadcastListener(l_side, broadcaster=world.caster.sui_address)
    try:
        # (the old get(nan) waited for good: closing the listener ends it)
        for call in (lambda: listener.get(timeout=timeout), lambda: listener.wait_hello(timeout)):
            raised = raised_within(call, 10, unstick=listener.close)
            assert isinstance(raised, error), raised
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("interval", "error"),
    [*BAD_WAITS, (0, ValueError), (0.0, ValueError), (None, TypeError)],
)
def test_the_monitor_interval_is_checked(interval: Any, error: type[Exception]) -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster = HostIdentity.generate()
    station = BroadcastStation(ledger, caster, ledger.create_broadcast(caster, "radio", 100, 1000))
    try:
        with pytest.raises(error):
            station.start_monitor(interval)
        assert station._monitor is None  # (nothing asking the ledger in a tight loop)
        station.start_monitor(0.05)  # a good one still starts it
        assert station._monitor is not None
    finally:
        station.close()


# -- 6. a damaged tip state file -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"broadcast_id":',
        b"\xff\xfe",
        b"[]",
        b'{"broadcast_id": "0x' + b"22" * 32 + b'", "tipped": {}}',
        b'{"broadcast_id": "BID", "tipped": {"0x1": 1e3}}',
        b'{"broadcast_id": "BID", "tipped": {"0x1": -1}}',
        b'{"broadcast_id": "BID", "tipped": {"no address": 1}}',
    ],
    ids=["empty", "cut", "not-utf8", "list", "other-broadcast", "float", "negative", "key"],
)
def test_a_damaged_tip_state_file_is_a_station_error_naming_it(
    tmp_path: Path, content: bytes
) -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster = HostIdentity.generate()
    b_id = ledger.create_broadcast(caster, "radio", 100, 1000)
    path = tmp_path / "tips.json"
    path.write_bytes(content.replace(b"BID", b_id.encode()))
    with pytest.raises(E.StationError, match=r"tips\.json"):
        BroadcastStation(ledger, caster, b_id, tip_state=path)
    # a good one is still read
    good = b'{"broadcast_id": "%s", "tipped": {"0x1": 5}}' % b_id.encode()
    path.write_bytes(good)
    station = BroadcastStation(ledger, caster, b_id, tip_state=path)
    assert station.tipped == {"0x" + "0" * 63 + "1": 5}
    station.close()
