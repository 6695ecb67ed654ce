"""Broadcast: a listener with a ledger but nothing pinned checks on the
ledger that the broadcast its station names is the station's own (an impostor naming a
real broadcast was believed, and its forged messages delivered), and ``wait_hello``
returns as soon as the listener closes (it waited its whole timeout after an impostor
HELLO)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import ChainError, InvalidObjectId
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Broadcast
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging.broadcast import (
    MESSAGE,
    AirChange,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
    signed_message,
)
from dtp.messaging.errors import StationError
from tests.messaging.broadcast_world import PRICE, SLOT_MS, World, hello_frame
from tests.messaging.rpc_world import PROMPT
from tests.support.polling import wait_for


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


class _FaultyLedger(LocalLedger):
    """A ledger whose broadcast look-up fails with an error of no known kind, once
    ``faulty`` is set: a remote ledger's client may fail so on an answer it did not
    expect (the fault the listener's reader must report, not take for the stream's end)."""

    faulty = False

    def get_broadcast(self, broadcast_id: str) -> Broadcast:
        if self.faulty:
            raise KeyError("an answer without a broadcaster")
        return super().get_broadcast(broadcast_id)


@dataclass
class Radio:
    ledger: _FaultyLedger
    caster: HostIdentity
    broadcast_id: str
    server: dtp.socket.DTPServer
    socks: list[dtp.socket.DTPSocket]

    def pair(self) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
        """A DTP connection: (station side, listener side)."""
        client = dtp.socket.create_connection(
            self.server.address, server_key=self.caster.noise_public, timeout=PROMPT
        )
        server_side, _ = self.server.accept(timeout=PROMPT)
        client.settimeout(None)
        server_side.settimeout(None)
        self.socks += [client, server_side]
        return server_side, client


@pytest.fixture
def radio(tmp_path: Path) -> Iterator[Radio]:
    ledger = _FaultyLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    caster = HostIdentity.generate()
    b_id = ledger.create_broadcast(caster, "radio", 100, 1000)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    r = Radio(ledger, caster, b_id, server, [])
    yield r
    for sock in r.socks:
        sock.abort("test over")
    server.close()
    ledger.close()


def _upper(address: str) -> str:
    return "0x" + address[2:].upper()


def test_a_listener_pinned_to_an_upper_case_address_accepts_the_genuine_station(
    radio: Radio,
) -> None:
    station = BroadcastStation(radio.ledger, radio.caster, radio.broadcast_id)
    s_side, l_side = radio.pair()
    listener = BroadcastListener(l_side, broadcaster=_upper(radio.caster.sui_address))
    try:
        assert listener.broadcaster == radio.caster.sui_address  # canonical form
        station.attach(s_side, "fan")
        assert listener.wait_hello(PROMPT), listener.close_reason
        assert (listener.forged, listener.close_reason) == (0, None)
        fan = HostIdentity.generate()
        radio.ledger.faucet(fan.sui_address, 10_000)
        radio.ledger.broadcast_contribute(fan, radio.broadcast_id, 10_000)
        seq = station.send(b"on air")
        items = [listener.get(timeout=PROMPT) for _ in range(2)]
        assert isinstance(items[0], AirChange) and items[0].on_air  # (it went on air)
        item = items[1]
        assert isinstance(item, BroadcastMessage) and (item.seq, item.payload) == (seq, b"on air")
    finally:
        listener.close()
        station.close()


def test_a_listener_pinned_in_upper_case_still_refuses_an_impostor(radio: Radio) -> None:
    station = BroadcastStation(radio.ledger, radio.caster, radio.broadcast_id)
    s_side, l_side = radio.pair()
    someone = HostIdentity.generate()
    listener = BroadcastListener(l_side, broadcaster=_upper(someone.sui_address))
    try:
        station.attach(s_side, "fan")
        assert not listener.wait_hello(PROMPT)
        assert (listener.forged, listener.close_reason) == (1, "an impostor station")
    finally:
        listener.close()
        station.close()


def test_a_listener_refuses_an_address_or_broadcast_id_that_is_no_id(radio: Radio) -> None:
    _, l_side = radio.pair()
    for kw in ({"broadcaster": "0xzz"}, {"broadcaster": "radio"}, {"broadcast_id": "radio"}):
        with pytest.raises(InvalidObjectId):
            BroadcastListener(l_side, **kw)  # type: ignore[arg-type]


def test_a_broadcast_stream_that_is_no_stream_is_refused_up_front(radio: Radio) -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(TypeError, match="needs a stream"):
        BroadcastListener(b"not a stream", broadcaster=radio.caster.sui_address)  # type: ignore[arg-type]
    station = BroadcastStation(radio.ledger, radio.caster, radio.broadcast_id)
    try:
        with pytest.raises(TypeError, match="needs a stream"):
            station.attach(None, "x")  # type: ignore[arg-type]
        assert station.listeners == 0
        # no thread was started for either (they died with an AttributeError)
        assert not [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.name in ("bcast-listener", "bcast-r-x", "bcast-w-x")
        ]
        # the station stays usable
        s_side, l_side = radio.pair()
        listener = BroadcastListener(l_side, broadcaster=radio.caster.sui_address)
        station.attach(s_side, "fan")
        assert listener.wait_hello(PROMPT), listener.close_reason
        listener.close()
    finally:
        station.close()


def test_an_unexpected_error_in_the_listener_says_what_happened(radio: Radio) -> None:
    station = BroadcastStation(radio.ledger, radio.caster, radio.broadcast_id)
    s_side, l_side = radio.pair()
    # nothing pinned: the listener asks its ledger whose broadcast the HELLO names
    listener = BroadcastListener(l_side, ledger=radio.ledger)
    radio.ledger.faulty = True
    try:
        station.attach(s_side, "fan")
        assert not listener.wait_hello(PROMPT)
        assert wait_for(lambda: listener.close_reason is not None, PROMPT)
        reason = listener.close_reason or ""
        assert "KeyError" in reason and "an answer without a broadcaster" in reason, reason
        assert "stream ended" not in reason
        with pytest.raises(E.StationError, match="KeyError"):
            listener.get(timeout=PROMPT)
    finally:
        radio.ledger.faulty = False
        listener.close()
        station.close()
