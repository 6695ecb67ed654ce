"""Broadcast (docs/messaging.md §5):

1. Station sessions: the HELLO is signed and names the session (nonce, start time),
   which every message's signature covers, so a relay can neither pass an earlier
   station instance's seq 1 off as the new one's nor rewind ``next_seq`` to replay what
   was sent before the listener joined.
2. An AIR frame (a cancel, off air) is never dropped like a message for a listener whose
   queue is full, nor is the AirChange on the listener's own queue: no listener stays on
   air for good.
3. The station remembers the newest :data:`TIP_WINDOW` tip IDs per tipper, and a floor,
   not every accepted tip ID for its whole life.
4. Tips are signed for the session, and ``tipped`` / ``tip_state`` carry the per-tipper
   totals over a restart: a restarted station does not accept a tip again.
5. A full tips or requests queue drops the oldest item, as the docs say.

Broadcast and discovery (docs/messaging.md §5, §6):

1. Discovery: an announcement a full cache would evict at once (the soonest to expire)
   is refused (``evicted``), not counted accepted and gone, so day-long announcements
   cannot crowd out every genuine host; ``announce`` makes room for the node's own.
2. A TIP frame does not cost the station a ledger read of its own (a fresh key is free
   to make): reads begin at most every ``_TIP_READ_GAP`` and serve every tip waiting,
   and a tip is still checked on a read begun after it arrived.
3. Past its slack, a listener replaces the newest queued AirChange, so the application
   never ends on a stale air state.
4. A default link name is never that of a listener still there, whoever has left.
5. Listener waits and the station monitor's interval refuse NaN, inf or a str.
6. A damaged tip state file is a typed error, not a bare JSON / UTF-8 / ValueError."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Broadcast
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging._framing import decode_body, encode_frame, read_frames
from dtp.messaging.broadcast import (
    AIR,
    MESSAGE,
    TIP,
    TIP_SKEW_US,
    TIP_WINDOW,
    AirChange,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
    signed_message,
    signed_tip,
)
from dtp.messaging.broadcast import _station as tip_state_module
from dtp.messaging.broadcast import _station as tips_module
from dtp.messaging.discovery import DiscoveryGossip, encode_announcement
from dtp.messaging.pubsub import PubSubNode
from tests.messaging.broadcast_world import World, hello_frame
from tests.support.polling import raised_within, wait_for

PROMPT = 30.0


def _frames(sock: Any, n: int) -> list[Any]:
    """The next ``n`` frames from ``sock`` (decoded), as a relay sees them."""
    out: list[Any] = []
    sock.settimeout(PROMPT)
    for body in read_frames(sock, 1 << 20, threading.Event()):
        out.append(decode_body(body))
        if len(out) >= n:
            break
    sock.settimeout(None)
    return out


def _relay(w: World, station: BroadcastStation, fan: int = 1) -> tuple[Any, Any, BroadcastListener]:
    """A relay between ``station`` and a new listener: (upstream socket, downstream
    socket, listener); nothing is forwarded unless the test does it."""
    s_side, upstream = w.pair()
    relay_side, l_side = w.pair()
    listener = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[fan], broadcast_id=w.broadcast_id
    )
    station.attach(s_side, "relay")
    return upstream, relay_side, listener


# -- 1. sessions -----------------------------------------------------------------------------


def test_an_earlier_sessions_message_is_refused_by_a_restarted_stations_listener(
    world: World,
) -> None:
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1000)
    first = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    s_side, recorder = w.pair()
    first.attach(s_side, "recorder")
    assert first.send(b"session-1: buy") == 1
    _hello, _air, old = _frames(recorder, 3)
    assert old[0] == MESSAGE and old[2] == 1
    first.close()

    second = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    upstream, relay_side, listener = _relay(w, second)
    try:
        assert second.send(b"session-2: sell") == 1
        hello, air, new = _frames(upstream, 3)
        for frame in (hello, air, old, new):  # the old seq 1 slipped in first
            relay_side.sendall(encode_frame(frame, 1 << 20))
        assert listener.wait_hello(PROMPT)
        assert listener.get(timeout=PROMPT) == AirChange(True, "covered", 1)
        message = listener.get(timeout=PROMPT)
        assert isinstance(message, BroadcastMessage)
        assert message.payload == b"session-2: sell"
        assert (listener.forged, listener.received) == (1, 1)
        assert second.session != first.session
        # the session the application can judge freshness by
        assert listener.session == second.session
        assert listener.session_started_ms == second.session_started_ms
        assert abs(second.session_started_ms - time.time() * 1000) < 3_600_000
    finally:
        listener.close()
        second.close()


def test_a_relay_cannot_rewind_the_hello(world: World) -> None:
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1000)
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    s_side, recorder = w.pair()
    station.attach(s_side, "recorder")
    station.send(b"old news 1")
    station.send(b"old news 2")
    _hello, _air, m1, m2 = _frames(recorder, 4)
    upstream, relay_side, listener = _relay(w, station)
    try:
        (hello,) = _frames(upstream, 1)
        assert hello[5] == 3
        hello[5] = 1  # rewind where the listener starts, then replay what it missed
        for frame in (hello, m1, m2):
            relay_side.sendall(encode_frame(frame, 1 << 20))
        assert not listener.wait_hello(PROMPT)
        assert listener.close_reason == "an impostor station" and listener.forged == 1
        assert listener.received == 0
    finally:
        listener.close()
        station.close()


# -- 2. air state through full queues ---------------------------------------------------------


def test_a_cancel_reaches_a_listener_whose_link_queue_was_full(world: World) -> None:
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1000)
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, link_queue=4)
    s_side, l_side = w.pair()
    station.attach(s_side, "slow")
    link = station._links[0]
    try:
        # nobody reads the listener's side yet: the writer blocks, its queue fills
        sent = 0
        while link.dropped == 0 and sent < 5000:
            station.send(b"x" * 60_000)
            sent += 1
        assert link.dropped > 0
        for i in range(40):  # air flapping while the queue is full: memory stays bounded
            station._set_air(i % 2 == 1, "covered" if i % 2 else "pool exhausted", 0)
        station.cancel()
        listener = BroadcastListener(
            l_side,
            ledger=w.ledger,
            identity=w.fans[0],
            broadcast_id=w.broadcast_id,
            queue_size=100_000,
        )
        assert listener.wait_hello(PROMPT)
        assert wait_for(lambda: not listener.on_air, timeout=PROMPT)
        items = []
        while True:
            try:
                items.append(listener.get(timeout=2))
            except queue.Empty:
                break
        assert items and items[-1] == AirChange(False, "cancelled", sent + 1)
        assert listener.received + link.dropped >= sent  # every message sent or counted
        listener.close()
    finally:
        station.close()


def test_an_air_change_reaches_an_application_whose_queue_is_full(world: World) -> None:
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1000)
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    s_side, l_side = w.pair()
    listener = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[0], broadcast_id=w.broadcast_id, queue_size=2
    )
    station.attach(s_side, "fan")
    try:
        assert listener.wait_hello(PROMPT)
        for i in range(3):
            station.send(b"m%d" % i)
        assert wait_for(lambda: listener.received == 3, timeout=PROMPT)
        station.cancel()
        assert wait_for(lambda: not listener.on_air, timeout=PROMPT)
        items = [listener.get(timeout=PROMPT) for _ in range(3)]
        assert items[-1] == AirChange(False, "cancelled", 4)
    finally:
        listener.close()
        station.close()


# -- 3, 4. tips: bounded memory, sessions, restarts ----------------------------------------------


def _tip_frame(w: World, station: BroadcastStation, tip_id: bytes, amount: int) -> bytes:
    fan = w.fans[0]
    signature = fan.sign(signed_tip(w.broadcast_id, station.session, tip_id, amount, ""))
    return encode_frame([TIP, tip_id, amount, "", fan.ed25519_public, signature])


def _settled(station: BroadcastStation, count: int) -> bool:
    return wait_for(
        lambda: station.tips.qsize() + station.inbox_dropped + station.invalid_tips >= count,
        timeout=120,
    )


def test_a_station_remembers_a_bounded_window_of_tip_ids(world: World) -> None:
    w = world
    n = 2 * TIP_WINDOW + 10
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, n)  # n MIST, once
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, inbox_size=1)
    s_side, l_side = w.pair()
    station.attach(s_side, "fan")
    try:
        ids = [i.to_bytes(8, "big") + bytes(8) for i in range(1, n + 1)]
        frames = [_tip_frame(w, station, tip_id, 1) for tip_id in ids]
        l_side.sendall(b"".join(frames))
        assert _settled(station, n)
        assert station.invalid_tips == 0 and station.tipped == {w.fans[0].sui_address: n}
        remembered = sum(len(ids.recent) for ids in station._tip_ids.values())
        assert remembered <= TIP_WINDOW
        # the oldest, the newest and one in between: all refused as replays
        l_side.sendall(frames[0] + frames[-1] + frames[n // 2])
        assert wait_for(lambda: station.invalid_tips == 3, timeout=PROMPT)
        assert station.tipped == {w.fans[0].sui_address: n}
    finally:
        station.close()


def _stamped(us: int) -> bytes:
    """A tip ID as BroadcastListener makes them: a time in microseconds, random bits."""
    return us.to_bytes(8, "big") + os.urandom(8)


def _two_devices(w: World, station: BroadcastStation) -> tuple[Any, Any]:
    """Two links of one fan (its phone and its laptop): their listener-side streams."""
    phone, phone_listener = w.pair()
    laptop, laptop_listener = w.pair()
    station.attach(phone, "fan-phone")
    station.attach(laptop, "fan-laptop")
    return phone_listener, laptop_listener


def _stall_first_fsync(
    monkeypatch: pytest.MonkeyPatch, fail: bool = False
) -> tuple[threading.Event, threading.Event]:
    """The station's first fsync (the first tip's save) signals ``syncing`` and waits
    for ``release`` (then fails, with ``fail``, as a full disk); later ones go through."""
    syncing, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def first_stalls(fd: int) -> None:
        if not syncing.is_set():
            syncing.set()
            release.wait(PROMPT)
            if fail:
                raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(tip_state_module.os, "fsync", first_stalls)
    return syncing, release


def test_a_second_devices_tip_is_not_refused_for_the_firsts(world: World) -> None:
    """The floor followed the count alone, so one tipper on two
    devices had a genuine tip from one refused once the other sent 64 newer ones."""
    w = world
    n = TIP_WINDOW // 4
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1000)
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, inbox_size=1000)
    phone_listener, laptop_listener = _two_devices(w, station)
    now = time.time_ns() // 1000
    try:
        signed_on_the_phone = _tip_frame(w, station, _stamped(now), 1)
        laptop_listener.sendall(
            b"".join(_tip_frame(w, station, _stamped(now + 1000 + i), 1) for i in range(n))
        )
        assert _settled(station, n) and station.invalid_tips == 0
        phone_listener.sendall(signed_on_the_phone)
        assert _settled(station, n + 1)
        assert station.invalid_tips == 0 and station.tipped == {w.fans[0].sui_address: n + 1}
        # it is still a replay the second time, and an ID far older than the newest
        # (beyond TIP_SKEW_US) is refused unseen
        phone_listener.sendall(signed_on_the_phone)
        phone_listener.sendall(_tip_frame(w, station, _stamped(now - TIP_SKEW_US), 1))
        assert wait_for(lambda: station.invalid_tips == 2, timeout=PROMPT)
        assert station.tipped == {w.fans[0].sui_address: n + 1}
    finally:
        station.close()


def test_refused_tips_from_fresh_keys_leave_nothing_behind(world: World) -> None:
    """A tipper's ID window was made before the contributions
    check, so tips signed by fresh keys (free to make), each refused, left an entry
    each for the station's life."""
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, inbox_size=10)
    s_side, l_side = w.pair()
    station.attach(s_side, "stranger")
    n = 20
    try:
        frames = []
        for _ in range(n):
            key = HostIdentity.generate()  # (never contributed)
            tip_id = _stamped(time.time_ns() // 1000)
            signature = key.sign(signed_tip(w.broadcast_id, station.session, tip_id, 1, ""))
            frames.append(encode_frame([TIP, tip_id, 1, "", key.ed25519_public, signature]))
        l_side.sendall(b"".join(frames))
        assert wait_for(lambda: station.invalid_tips == n, timeout=PROMPT)
        assert station._tip_ids == {} and station.tipped == {}
    finally:
        station.close()


def test_saving_a_tip_does_not_stall_the_broadcast(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tip state was written and synced holding the lock
    send() takes, so a slow disk stalled the broadcast once per tip."""
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1000)
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, tip_state=tmp_path / "t")
    s_side, l_side = w.pair()
    station.attach(s_side, "fan")
    assert station.check()
    syncing, release = _stall_first_fsync(monkeypatch)
    try:
        l_side.sendall(_tip_frame(w, station, _stamped(time.time_ns() // 1000), 1))
        assert syncing.wait(PROMPT)
        sender = threading.Thread(target=station.send, args=(b"news",), daemon=True)
        sender.start()
        sender.join(PROMPT / 3)
        assert not sender.is_alive(), "send() waited for the tip state's fsync"
        assert station.tips.qsize() == 0  # (not accepted before it is saved)
        release.set()
        assert wait_for(lambda: station.tips.qsize() == 1, timeout=PROMPT)
        assert json.loads((tmp_path / "t").read_text())["tipped"] == station.tipped
    finally:
        release.set()
        station.close()


def test_a_restarted_station_refuses_old_tips_and_keeps_the_totals(
    world: World,
    tmp_path: Path,
) -> None:
    w = world
    fan = w.fans[0].sui_address
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 100)
    state = tmp_path / "tips.json"
    first = BroadcastStation(w.ledger, w.caster, w.broadcast_id, tip_state=state)
    s_side, l_side = w.pair()
    first.attach(s_side, "fan")
    frame = _tip_frame(w, first, b"\x00" * 15 + b"\x01", 100)
    l_side.sendall(frame)
    assert _settled(first, 1) and first.tips.qsize() == 1
    assert first.tipped == {fan: 100}
    first.close()

    # the same tip replayed to the station's replacement: signed for another session
    second = BroadcastStation(w.ledger, w.caster, w.broadcast_id, tip_state=state)
    s_side, l_side = w.pair()
    second.attach(s_side, "fan")
    try:
        l_side.sendall(frame)
        assert wait_for(lambda: second.invalid_tips == 1, timeout=PROMPT)
        # a new tip for the current session is not covered: the 100 MIST were tipped before
        l_side.sendall(_tip_frame(w, second, b"\x00" * 15 + b"\x02", 1))
        assert wait_for(lambda: second.invalid_tips == 2, timeout=PROMPT)
        assert second.tips.empty() and second.tipped == {fan: 100}
    finally:
        second.close()

    # the totals handed over in memory do the same
    third = BroadcastStation(w.ledger, w.caster, w.broadcast_id, tipped={fan: 100})
    s_side, l_side = w.pair()
    third.attach(s_side, "fan")
    try:
        l_side.sendall(_tip_frame(w, third, b"\x00" * 15 + b"\x03", 1))
        assert wait_for(lambda: third.invalid_tips == 1, timeout=PROMPT)
    finally:
        third.close()


# -- 5. full inboxes drop the oldest --------------------------------------------------------------


def test_full_inboxes_drop_the_oldest_and_count_dropped_tips(world: World) -> None:
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, inbox_size=1)
    s_side, l_side = w.pair()
    listener = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[0], broadcast_id=w.broadcast_id
    )
    station.attach(s_side, "fan")
    try:
        assert listener.wait_hello(PROMPT)
        listener.request("first")
        listener.request("second")
        assert wait_for(lambda: station.inbox_dropped == 1, timeout=PROMPT)
        # (the oldest is dropped and counted before the newest is put in its place)
        assert station.requests.get(timeout=PROMPT).text == "second"
        listener.tip(10, "first tip")
        second = listener.tip(20, "second tip")
        assert wait_for(lambda: station.inbox_dropped == 2, timeout=PROMPT)
        assert station.tips_dropped == 1
        assert station.tips.get(timeout=PROMPT).tip_id == second
    finally:
        listener.close()
        station.close()


def test_a_covered_tip_is_not_refused_for_anothers_failed_save(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tip is counted before its save and taken back when
    the save fails; a second tip checked meanwhile was refused as not covered for
    good, though it was once the first was taken back. It now waits for that save."""
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1)  # one 1-MIST tip
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, tip_state=tmp_path / "t")
    phone_listener, laptop_listener = _two_devices(w, station)
    syncing, release = _stall_first_fsync(monkeypatch, fail=True)
    waiting = threading.Event()

    class Watched(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waiting.set()
            return super().wait(timeout)

    station._tip_saved = Watched(station._lock)
    now = time.time_ns() // 1000
    try:
        phone_listener.sendall(_tip_frame(w, station, _stamped(now), 1))
        assert syncing.wait(PROMPT)
        laptop_listener.sendall(_tip_frame(w, station, _stamped(now + 1), 1))
        # the second is checked during the first's save: it waits for the save
        assert wait_for(lambda: waiting.is_set() or station.invalid_tips > 0, timeout=PROMPT)
        release.set()
        assert wait_for(lambda: station.tips.qsize() == 1, timeout=PROMPT)
        assert station.unchecked_tips == 1 and station.invalid_tips == 0
        assert station.tipped == {w.fans[0].sui_address: 1}
    finally:
        release.set()
        station.close()


def test_a_tip_waiting_on_a_hung_save_is_unchecked_not_invalid(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A save that hangs (a stalled disk) does not hold the tipper's other links for
    good: the tip waiting on it gives up, counted unchecked (not the listener's fault)."""
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 1)
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id, tip_state=tmp_path / "t")
    phone_listener, laptop_listener = _two_devices(w, station)
    syncing, release = _stall_first_fsync(monkeypatch)
    monkeypatch.setattr(tips_module, "_TIP_SAVE_WAIT", 0.2)
    now = time.time_ns() // 1000
    try:
        phone_listener.sendall(_tip_frame(w, station, _stamped(now), 1))
        assert syncing.wait(PROMPT)
        laptop_listener.sendall(_tip_frame(w, station, _stamped(now + 1), 1))
        assert wait_for(lambda: station.unchecked_tips == 1, timeout=PROMPT)
        assert station.invalid_tips == 0
        release.set()
        assert wait_for(lambda: station.tips.qsize() == 1, timeout=PROMPT)
        assert station.tipped == {w.fans[0].sui_address: 1}
    finally:
        release.set()
        station.close()


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


def test_tips_from_fresh_keys_cost_a_bounded_number_of_ledger_reads(world: World) -> None:
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
            return 2 + (time.monotonic() - start) / tips_module._TIP_READ_GAP

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


def test_a_tip_is_checked_on_a_read_made_after_it_arrived(world: World) -> None:
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


def test_a_tippers_covered_tips_share_a_read(world: World) -> None:
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
        assert counted.reads <= 2 + elapsed / tips_module._TIP_READ_TRUST
    finally:
        station.close()


# -- 3. the listener's newest air change -----------------------------------------------------------


def test_the_newest_air_change_reaches_an_application_past_the_slack(world: World) -> None:
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
        # the last one is the cancel, not "covered", so the application goes off air
        assert items[-1] == AirChange(False, "cancelled", 2)
        assert not listener.on_air
    finally:
        listener.close()


# -- 4. default link names -------------------------------------------------------------------------


def test_a_newcomer_does_not_take_the_name_of_a_listener_still_there(world: World) -> None:
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
    world: World,
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
