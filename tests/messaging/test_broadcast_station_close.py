"""Broadcast (docs/messaging.md §5):

1. A station went on taking listeners after :meth:`BroadcastStation.close`: ``attach``
   started the link's reader and writer threads and every later ``send`` reached the
   listener, so a link attached while ``close`` ran (or after it) was never closed and
   its threads never stopped. ``attach`` now refuses a closed station (StationError).
2. A listener that attached after the broadcast was cancelled heard only the HELLO's
   "off air", which reads as an exhausted pool: it never learnt of the cancel (so never
   knew to withdraw its share of the pool, and a top-up was refused by the ledger). It
   now gets the AIR "cancelled" right after the HELLO.
"""

from __future__ import annotations

import threading

import pytest

from dtp.messaging import errors as E
from dtp.messaging.broadcast import AirChange, BroadcastListener, BroadcastStation
from tests.messaging.broadcast_world import World

PROMPT = 5.0


def _bcast_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("bcast-")}


def test_a_closed_station_takes_no_more_listeners(world: World) -> None:
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    before = _bcast_threads()
    station.close()
    s_side, _ = w.pair()
    with pytest.raises(E.StationError, match="closed"):
        station.attach(s_side, "late")
    # nothing was started for it, and nothing is broadcast to it
    assert station.listeners == 0
    assert _bcast_threads() == before


def test_a_listener_attached_after_a_cancel_hears_of_it(world: World) -> None:
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    try:
        station.cancel()
        s_side, l_side = w.pair()
        listener = BroadcastListener(
            l_side, ledger=w.ledger, identity=w.fans[0], broadcast_id=w.broadcast_id
        )
        station.attach(s_side, "late")
        assert listener.wait_hello(PROMPT)
        assert not listener.on_air
        item = listener.get(timeout=PROMPT)
        assert item == AirChange(False, "cancelled", 1)
        listener.close()
    finally:
        station.close()
