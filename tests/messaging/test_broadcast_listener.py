"""Broadcast: a listener's own queue drops show in the next message's
``missed_before``, a ledger failure while the station checks a tip leaves the
listener's link up, and a message sent while a listener attaches follows its HELLO."""

from __future__ import annotations

import pytest

from dtp.errors import ChainError
from dtp.messaging.broadcast import (
    AirChange,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
    _StationLink,
)
from tests.messaging.broadcast_world import PRICE, World, station_and_listener
from tests.support.polling import wait_for


def test_messages_the_listener_dropped_count_in_missed_before(world: World) -> None:
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    s_side, l_side = w.pair()
    listener = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[0], broadcast_id=w.broadcast_id, queue_size=2
    )
    station.attach(s_side, "fan0")
    try:
        assert listener.wait_hello(10)
        listener.contribute(10 * PRICE)
        for i in range(5):
            station.send(b"m%d" % i)
        # the reader took all five; the queue held the on-air change and message 1
        assert wait_for(lambda: listener.received == 5)
        first = [listener.get(timeout=10), listener.get(timeout=10)]
        assert isinstance(first[0], AirChange) and first[0].on_air
        assert isinstance(first[1], BroadcastMessage) and first[1].seq == 1
        assert listener.dropped == 4  # messages 2..5 found the queue full
        station.send(b"m5")
        nxt = listener.get(timeout=10)
        # messages 2..5 never reached the application: the gap before 6 is four
        assert isinstance(nxt, BroadcastMessage) and (nxt.seq, nxt.missed_before) == (6, 4)
        station.send(b"m6")
        after = listener.get(timeout=10)
        assert isinstance(after, BroadcastMessage) and (after.seq, after.missed_before) == (7, 0)
    finally:
        listener.close()
        station.close()


def test_a_ledger_failure_checking_a_tip_leaves_the_link_up(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    station, listener = station_and_listener(w)
    try:
        listener.contribute(500)
        real_get_broadcast = w.ledger.get_broadcast

        def down(broadcast_id: str) -> object:
            raise ChainError("the node cannot be reached", name="LedgerUnavailable")

        monkeypatch.setattr(w.ledger, "get_broadcast", down)
        listener.tip(100, "first")
        assert wait_for(lambda: station.unchecked_tips == 1)
        monkeypatch.setattr(w.ledger, "get_broadcast", real_get_broadcast)
        # the same link still carries tips and requests
        tip_id = listener.tip(100, "second")
        tip = station.tips.get(timeout=10)
        assert (tip.tip_id, tip.message) == (tip_id, "second")
        assert station.listeners == 1 and station.invalid_tips == 0
        assert not listener.closed.is_set()
    finally:
        listener.close()
        station.close()


def test_a_message_sent_while_a_listener_attaches_follows_its_hello(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    w.ledger.broadcast_contribute(w.fans[0], w.broadcast_id, 10 * PRICE)
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    real_start = _StationLink.start

    def start_after_a_send(link: _StationLink, *args: object) -> None:
        # another thread's send() landing after attach() let go of the station's lock
        # and before the link started
        station.send(b"meanwhile")
        real_start(link, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_StationLink, "start", start_after_a_send)
    s_side, l_side = w.pair()
    listener = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[1], broadcast_id=w.broadcast_id
    )
    try:
        station.attach(s_side, "late")
        assert listener.wait_hello(10)
        items = [listener.get(timeout=10)]
        while not isinstance(items[-1], BroadcastMessage):
            items.append(listener.get(timeout=10))
        assert (items[-1].seq, items[-1].payload) == (1, b"meanwhile")
        assert listener.violations == 0
    finally:
        listener.close()
        station.close()


def test_request_and_tip_text_is_checked_before_anything_is_paid_or_sent(world: World) -> None:
    w = world
    station, listener = station_and_listener(w)
    try:
        with pytest.raises(TypeError) as not_text:
            listener.request(b"play it")  # type: ignore[arg-type]
        assert type(not_text.value) is TypeError  # was AttributeError
        with pytest.raises(ValueError) as surrogate:
            listener.request("\ud800")
        assert type(surrogate.value) is ValueError  # was UnicodeEncodeError
        with pytest.raises(TypeError) as tip_not_text:
            listener.tip(100, b"thanks")  # type: ignore[arg-type]
        assert type(tip_not_text.value) is TypeError
        with pytest.raises(ValueError) as tip_surrogate:
            listener.tip(100, "\ud800")
        assert type(tip_surrogate.value) is ValueError
        # nothing was contributed for the refused tips, and the link still works
        assert w.ledger.get_broadcast(w.broadcast_id).pool == 0
        listener.request("sync")
        assert station.requests.get(timeout=10).text == "sync"
    finally:
        listener.close()
        station.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"inbox_size": 0}, ValueError),  # queue.Queue(0) is unbounded: listeners' tips
        ({"link_queue": 0}, ValueError),
        ({"max_listeners": -1}, ValueError),
        ({"link_queue": 4.0}, TypeError),
    ],
)
def test_station_sizes_out_of_range_are_refused(
    world: World, kwargs: dict, error: type[Exception]
) -> None:
    with pytest.raises(error):
        BroadcastStation(world.ledger, world.caster, world.broadcast_id, **kwargs)
