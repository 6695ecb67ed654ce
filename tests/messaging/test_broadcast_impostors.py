"""Broadcast: a listener with a ledger but nothing pinned checks on the
ledger that the broadcast its station names is the station's own (an impostor naming a
real broadcast was believed, and its forged messages delivered), and ``wait_hello``
returns as soon as the listener closes (it waited its whole timeout after an impostor
HELLO)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.errors import ChainError
from dtp.keys import HostIdentity
from dtp.messaging.broadcast import (
    MESSAGE,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
    signed_message,
)
from dtp.messaging.errors import StationError
from dtp.messaging.framing import encode_frame
from tests.messaging.test_broadcast import PRICE, SLOT_MS, World, hello_frame


@pytest.fixture
def world() -> Iterator[World]:
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster = HostIdentity.generate()
    fans = [HostIdentity.generate()]
    ledger.faucet(fans[0].sui_address, 10_000)
    b_id = ledger.create_broadcast(caster, "radio", PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    w = World(ledger, caster, fans, b_id, server, [])
    yield w
    for sock in w.socks:
        sock.abort("test over")
    server.close()
    ledger.close()


def _impostor_hello(w: World, evil: HostIdentity, b_id: str) -> tuple[object, bytes]:
    s_side, l_side = w.pair()
    s_side.sendall(hello_frame(evil, b_id))
    signature = evil.sign(signed_message(b_id, "radio", b"\x01" * 16, 1, b"fake"))
    s_side.sendall(encode_frame([MESSAGE, "radio", 1, b"fake", signature]))
    return l_side, signature


def test_an_impostor_naming_a_real_broadcast_is_refused(world: World) -> None:
    w = world
    evil = HostIdentity.generate()
    l_side, _ = _impostor_hello(w, evil, w.broadcast_id)
    listener = BroadcastListener(l_side, ledger=w.ledger, identity=w.fans[0])
    try:
        assert not listener.wait_hello(10)
        assert listener.close_reason == "an impostor station" and listener.forged == 1
        with pytest.raises(StationError):
            listener.get(timeout=10)
    finally:
        listener.close()


def test_an_impostor_naming_no_broadcast_is_refused(world: World) -> None:
    w = world
    evil = HostIdentity.generate()
    l_side, _ = _impostor_hello(w, evil, "0x" + "ab" * 32)
    listener = BroadcastListener(l_side, ledger=w.ledger, identity=w.fans[0])
    try:
        assert not listener.wait_hello(10)
        assert listener.close_reason == "an impostor station"
    finally:
        listener.close()


def test_a_ledger_failure_checking_the_station_ends_the_listener(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world

    def down(broadcast_id: str) -> object:
        raise ChainError("the node cannot be reached", name="LedgerUnavailable")

    l_side, _ = _impostor_hello(w, w.caster, w.broadcast_id)
    monkeypatch.setattr(w.ledger, "get_broadcast", down)
    listener = BroadcastListener(l_side, ledger=w.ledger, identity=w.fans[0])
    try:
        assert not listener.wait_hello(10)
        assert listener.close_reason is not None
        assert listener.close_reason.startswith("the station could not be checked")
    finally:
        listener.close()


def test_the_real_station_is_accepted_without_a_pinned_broadcast(world: World) -> None:
    w = world
    station = BroadcastStation(w.ledger, w.caster, w.broadcast_id)
    s_side, l_side = w.pair()
    listener = BroadcastListener(l_side, ledger=w.ledger, identity=w.fans[0])
    station.attach(s_side, "fan0")
    try:
        assert listener.wait_hello(10)
        assert listener.broadcaster == w.caster.sui_address
        listener.contribute(10 * PRICE)
        station.send(b"real")
        items = [listener.get(timeout=10), listener.get(timeout=10)]
        assert any(isinstance(i, BroadcastMessage) and i.payload == b"real" for i in items)
    finally:
        listener.close()
        station.close()


def test_wait_hello_returns_when_an_impostor_closes_the_listener(world: World) -> None:
    w = world
    evil = HostIdentity.generate()
    l_side, _ = _impostor_hello(w, evil, w.broadcast_id)
    listener = BroadcastListener(
        l_side, ledger=w.ledger, identity=w.fans[0], broadcast_id=w.broadcast_id
    )
    try:
        start = time.monotonic()
        assert not listener.wait_hello(30)
        assert time.monotonic() - start < 15  # it waited the whole 30 s
        assert listener.close_reason == "an impostor station"
    finally:
        listener.close()
