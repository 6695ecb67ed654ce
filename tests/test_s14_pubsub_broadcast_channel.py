"""Broadcast, session 14: a message whose frame does not fit the listeners' cap (a long
channel name is in every frame) is refused by ``send`` with PayloadTooLarge, its
sequence number unused; it was sent, skipped by every listener as oversized, and
``send`` returned as if it had gone."""

from __future__ import annotations

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
from dtp.messaging.broadcast import (
    MAX_PAYLOAD,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
)
from dtp.messaging.errors import PayloadTooLarge
from tests.test_messaging_broadcast import PRICE, SLOT_MS, World


@pytest.mark.parametrize("channel", ["radio", "c" * 2000])
def test_a_message_is_delivered_or_refused_never_lost(channel: str) -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster, fan = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(fan.sui_address, 10_000)
    b_id = ledger.create_broadcast(caster, channel, PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    w = World(ledger, caster, [fan], b_id, server, [])
    station = BroadcastStation(ledger, caster, b_id)
    s_side, l_side = w.pair()
    listener = BroadcastListener(l_side, ledger=ledger, identity=fan, broadcast_id=b_id)
    station.attach(s_side, "fan")
    try:
        assert listener.wait_hello(10)
        listener.contribute(10 * PRICE)
        big = b"x" * MAX_PAYLOAD
        if len(channel) < 100:
            assert station.send(big) == 1
        else:
            with pytest.raises(PayloadTooLarge):
                station.send(big)
        seq = station.send(b"small")
        got = [listener.get(timeout=10) for _ in range(3 if seq == 2 else 2)]
        messages = [m for m in got if isinstance(m, BroadcastMessage)]
        assert [m.missed_before for m in messages] == [0] * len(messages)
        assert messages[-1].payload == b"small" and messages[-1].seq == seq
        if seq == 2:
            assert messages[0].payload == big
        assert listener.violations == 0
    finally:
        listener.close()
        station.close()
        for sock in w.socks:
            sock.abort("test over")
        server.close()
        ledger.close()
