"""Broadcast: a closed listener's ``tip`` refuses before paying (it paid the
contribution, then failed to send the tip to a station that was gone)."""

from __future__ import annotations

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging.broadcast import BroadcastListener, BroadcastStation
from dtp.messaging.errors import StationError
from tests.messaging.broadcast_world import PRICE, SLOT_MS, World
from tests.support.polling import wait_for


def test_a_tip_after_the_station_left_costs_nothing() -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster, fan = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(fan.sui_address, 10_000)
    b_id = ledger.create_broadcast(caster, "radio", PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    w = World(ledger, caster, [fan], b_id, server, [])
    station = BroadcastStation(ledger, caster, b_id)
    s_side, l_side = w.pair()
    listener = BroadcastListener(l_side, ledger=ledger, identity=fan, broadcast_id=b_id)
    station.attach(s_side, "fan")
    try:
        assert listener.wait_hello(10)
        s_side.close()
        assert wait_for(lambda: listener.closed.is_set())
        before = ledger.balance(fan.sui_address)
        with pytest.raises(StationError):
            listener.tip(100, "hi")
        assert ledger.balance(fan.sui_address) == before
    finally:
        listener.close()
        station.close()
        for sock in w.socks:
            sock.abort("test over")
        server.close()
        ledger.close()
