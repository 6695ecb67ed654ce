"""Broadcast: a message whose frame does not fit the listeners' cap (a long
channel name is in every frame) is refused by ``send`` with PayloadTooLarge, its
sequence number unused; it was sent, skipped by every listener as oversized, and
``send`` returned as if it had gone.

A broadcast stream that ends inside a frame -- a message cut off -- is a
violation, on the station's link to a listener and on the listener's side alike (as
pub/sub's links count it since 3a9e70b); both ended as on a clean end of stream, with
nothing counted."""

from __future__ import annotations

import socket

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging._framing import encode_frame
from dtp.messaging.broadcast import (
    MAX_PAYLOAD,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
)
from dtp.messaging.errors import PayloadTooLarge
from tests.messaging.broadcast_world import PRICE, SLOT_MS, World
from tests.support.polling import wait_for


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


_CUT = encode_frame([99, b"x" * 64])[:20]  # the first 20 bytes of a frame


def _world() -> tuple[World, LocalLedger, HostIdentity, HostIdentity, str]:
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster, fan = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(fan.sui_address, 10_000)
    b_id = ledger.create_broadcast(caster, "radio", PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    return World(ledger, caster, [fan], b_id, server, []), ledger, caster, fan, b_id


def _end(w: World, ledger: LocalLedger) -> None:
    for sock in w.socks:
        sock.abort("test over")
    w.server.close()
    ledger.close()


def test_a_listener_stream_cut_inside_a_frame_is_a_station_link_violation() -> None:
    w, ledger, caster, _, b_id = _world()
    station = BroadcastStation(ledger, caster, b_id)
    try:
        s_side, raw = w.pair()
        station.attach(s_side, "fan")
        (link,) = station._links
        raw.sendall(_CUT)
        raw.shutdown(socket.SHUT_WR)
        assert link.closed.wait(10)
        assert link.violations == 1
    finally:
        station.close()
        _end(w, ledger)


def test_a_station_stream_cut_inside_a_frame_is_a_listener_violation() -> None:
    w, ledger, _, fan, b_id = _world()
    raw, l_side = w.pair()
    listener = BroadcastListener(l_side, ledger=ledger, identity=fan, broadcast_id=b_id)
    try:
        raw.sendall(_CUT)
        raw.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: listener.close_reason is not None, 10)
        assert listener.violations == 1, listener.close_reason
    finally:
        listener.close()
        _end(w, ledger)
