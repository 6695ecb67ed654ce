"""A fresh user's review of dtp.messaging, over real DTP connections on 127.0.0.1 and
LocalLedger files.

What was wrong: ``@rpc.method`` without parentheses registered nothing and put the
decorator's inner wrapper in the function's place (clients got MethodNotFound), on the
blocking and the asyncio server; a ``BroadcastListener`` pinned to its broadcaster's
address spelt in upper case took the genuine station for an impostor; a listener or
station given something that is no stream started anyway, its reader thread died with
an AttributeError and the listener blamed "the station's stream ended", as it did after
any unexpected error in its reader; ``DiscoveryGossip.announce`` did not record the
announcement before it returned, though it said so; ``send_sealed(ledger=...)`` without
a ``signer`` complained that no ledger mailbox was given."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Broadcast, EventFilter
from dtp.errors import InvalidObjectId
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.broadcast import (
    AirChange,
    BroadcastListener,
    BroadcastMessage,
    BroadcastStation,
)
from dtp.messaging.discovery import DiscoveryGossip, encode_announcement
from dtp.messaging.pubsub import PubSubNode
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcServer
from dtp.messaging.sealed import seal, send_sealed
from tests.messaging.test_pubsub import Mesh
from tests.messaging.test_rpc import Served
from tests.polling import wait_for
from tests.sealed_world import sealed_world

#: Generous bound on anything that should happen at once (a slow CI machine).
PROMPT = 30.0


# -- 3. @rpc.method without parentheses -----------------------------------------------------------


def test_a_bare_method_decorator_registers_the_function_under_its_name() -> None:
    rpc = RpcServer()

    @rpc.method
    def add(params: list[int]) -> int:
        return sum(params)

    @rpc.method()
    def sub(params: list[int]) -> int:
        return params[0] - params[1]

    assert sorted(rpc.methods) == ["add", "sub"]
    assert add([1, 2]) == 3  # the function itself, not the decorator's wrapper
    served = Served(rpc)
    try:
        client = served.connect(timeout=PROMPT)
        assert client.call("add", [1, 2]) == 3
        assert client.call("sub", [3, 1]) == 2
        client.close()
    finally:
        served.close()


def test_a_bare_method_decorator_makes_the_checks_the_parenthesized_one_makes() -> None:
    rpc = RpcServer()

    @rpc.method
    def echo(params: Any) -> Any:
        return params

    with pytest.raises(ValueError, match="already registered"):

        @rpc.method
        def echo(params: Any) -> Any:  # (the same name: the clash is the point)
            return params

    with pytest.raises(ValueError, match="already registered"):
        rpc.method()(echo)
    # a callable with no name of its own is said so (not an AttributeError)
    with pytest.raises(TypeError, match="no name of its own"):
        rpc.method(functools.partial(echo))
    assert rpc.method("partial")(functools.partial(echo)) is not None
    with pytest.raises(TypeError, match="a method name is a str"):
        rpc.method(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        rpc.method("x" * 300)(echo)
    assert sorted(rpc.methods) == ["echo", "partial"]


def test_a_bare_method_decorator_registers_on_the_asyncio_server_too() -> None:
    rpc = AsyncRpcServer()

    @rpc.method
    async def echo(value: str) -> str:
        return value

    assert list(rpc.methods) == ["echo"]
    assert asyncio.iscoroutinefunction(echo)

    async def main() -> None:
        identity = HostIdentity.generate()
        srv = await dtp.aio.start_server(rpc.serve_connection, "127.0.0.1", 0, identity=identity)
        try:
            host, port = srv.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=srv.noise_public_key, timeout=PROMPT
            )
            async with AsyncRpcClient(reader, writer, timeout=PROMPT) as client:
                assert await client.call("echo", "hi") == "hi"
            writer.close()
            await writer.wait_closed()
        finally:
            srv.close()
            await srv.wait_closed()

    asyncio.run(main())


# -- 4. and 5. broadcast: addresses compared as IDs, streams checked -----------------------------


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


# -- 6. announce() records locally ---------------------------------------------------------------

HOST = "0x" + "ab" * 32


def _sentinel(gossip: DiscoveryGossip, node: PubSubNode) -> None:
    """Publish another host's announcement on ``node`` and wait until ``gossip`` has it:
    the gossip thread takes deliveries in order, so it has handled every earlier one."""
    other = HostIdentity.generate()
    host = "0x" + "cd" * 32
    data = encode_announcement(other, host, [(1, "other")], [], gossip.clock_ms(), 60_000)
    node.publish(gossip.topic, data)
    assert gossip.wait_for(host, PROMPT) is not None


def test_announce_records_the_announcement_before_it_returns() -> None:
    provider = HostIdentity.generate()
    for _ in range(5):  # the bug was a race the gossip thread always lost: 20 of 20
        node = PubSubNode()
        gossip = DiscoveryGossip(node)
        try:
            ann = gossip.announce(provider, HOST, [(7000, "echo")], ["127.0.0.1:7000"])
            assert gossip.host(HOST) == ann
            assert [(r.host_id, r.port) for r in gossip.lookup("echo")] == [(HOST, 7000)]
            assert gossip.accepted == 1
            # its own copy, coming back from the node, is no news and no duplicate
            _sentinel(gossip, node)
            assert (gossip.accepted, gossip.duplicates) == (2, 0)
            assert gossip.host(HOST) == ann
        finally:
            gossip.close()
            node.close()


def test_announce_with_a_ledger_records_only_what_the_gossip_thread_would(
    tmp_path: Path,
) -> None:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=1_000_000)
    provider, stranger = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(provider, provider.noise_public)
    node = PubSubNode()
    gossip = DiscoveryGossip(node, ledger=ledger)
    try:
        # signed by someone who is not the host's authority: every peer with a ledger
        # would drop it as forged -- the caller is told, and nothing is gossiped
        with pytest.raises(E.DiscoveryError, match="authority") as refused:
            gossip.announce(stranger, host, [(80, "http")])
        assert not isinstance(refused.value, E.ForgedAnnouncement)  # (ours, not a peer's)
        assert gossip.host(host) is None and gossip.forged == 0
        ann = gossip.announce(provider, host, [(80, "http")])
        assert gossip.host(host) == ann and gossip.accepted == 1
        # once the gossip thread has seen its copy come back, nothing changed
        other = HostIdentity.generate()
        other_host = ledger.create_host(other, other.noise_public)
        data = encode_announcement(other, other_host, [(1, "x")], [], ledger.clock_ms(), 60_000)
        node.publish(gossip.topic, data)
        assert gossip.wait_for(other_host, PROMPT) is not None
        assert (gossip.accepted, gossip.forged, gossip.duplicates) == (2, 0, 0)
        assert gossip.host(host) == ann
    finally:
        gossip.close()
        node.close()
        ledger.close()


def test_an_announcement_recorded_locally_still_reaches_the_peers() -> None:
    mesh = Mesh(2, [(0, 1)])
    gossips = [DiscoveryGossip(node) for node in mesh.nodes]
    try:
        mesh.settle("dtp/discovery")
        provider = HostIdentity.generate()
        ann = gossips[0].announce(provider, HOST, [(7000, "echo")])
        assert gossips[0].host(HOST) == ann
        assert gossips[1].wait_for(HOST, PROMPT) == ann
    finally:
        for gossip in gossips:
            gossip.close()
        mesh.close()


# -- 7. send_sealed(ledger=...) without a signer ---------------------------------------------------


def test_send_sealed_with_a_ledger_but_no_signer_is_refused_up_front(tmp_path: Path) -> None:
    with sealed_world(tmp_path) as (ledger, alice, bob, hb):
        ledger.faucet(alice.sui_address, 10**9)
        message = seal(bob.noise_public, b"hi", recipient_host=hb)
        with pytest.raises(ValueError, match="signer"):
            send_sealed(message, recipient_host=hb, ledger=ledger)
        events, _ = ledger.events(None, EventFilter(type="MailDeposited"), 10)
        assert events == []
        # given a signer, the same call goes to the mailbox
        assert send_sealed(message, recipient_host=hb, ledger=ledger, signer=alice) == "mailbox"


def test_send_sealed_says_the_signer_is_missing_when_the_direct_delivery_fails(
    tmp_path: Path,
) -> None:
    with sealed_world(tmp_path) as (ledger, _alice, bob, hb):
        served = Served(RpcServer())
        client = served.connect(timeout=PROMPT)
        served.close()  # bob is gone: the direct delivery fails
        message = seal(bob.noise_public, b"hi", recipient_host=hb)
        with pytest.raises(ValueError, match="signer") as caught:
            send_sealed(message, recipient_host=hb, client=client, ledger=ledger, timeout=5)
        assert isinstance(caught.value.__cause__, E.RpcError | OSError)
        events, _ = ledger.events(None, EventFilter(type="MailDeposited"), 10)
        assert events == []
        client.close()
