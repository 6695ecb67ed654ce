"""Pub/sub and broadcast: a link on a stream that has a timeout (as
``create_connection(timeout=...)`` leaves it) stays up while idle. Its reader took the
stream's TimeoutError (nothing read) for a failure and closed the link after that long
without traffic: a pub/sub peer was then never sent anything, a broadcast listener
ended while the station was quiet."""

from __future__ import annotations

import time

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging.broadcast import BroadcastListener, BroadcastMessage, BroadcastStation
from dtp.messaging.pubsub import PubSubNode
from tests.messaging.broadcast_world import PRICE, SLOT_MS
from tests.support.polling import wait_for

TIMEOUT = 0.3
IDLE = 1.2  # the scenario itself: several of the streams' timeouts without traffic


def _pair(
    server: dtp.socket.DTPServer, key: bytes
) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
    client = dtp.socket.create_connection(server.address, server_key=key, timeout=10)
    other, _ = server.accept(timeout=10)
    client.settimeout(TIMEOUT)
    other.settimeout(TIMEOUT)
    return client, other


def test_an_idle_pubsub_link_stays_up() -> None:
    ident = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=ident)
    client, other = _pair(server, ident.noise_public)
    a, b = PubSubNode("a"), PubSubNode("b")
    try:
        links = [a.attach(client), b.attach(other)]
        time.sleep(IDLE)
        assert not any(link.closed.is_set() for link in links)
        sub = b.subscribe("t")
        assert a.wait_for_interest("t", timeout=10)
        a.publish("t", b"after a quiet while")
        assert sub.get(timeout=10).data == b"after a quiet while"
        # a closed link's reader now ends at the stream's next timeout
        a.close()
        assert wait_for(lambda: not links[0]._reader.is_alive())
    finally:
        a.close()
        b.close()
        client.abort("test over")
        other.abort("test over")
        server.close()


def test_an_idle_broadcast_listener_and_station_link_stay_up() -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster, fan = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(fan.sui_address, 10_000)
    b_id = ledger.create_broadcast(caster, "radio", PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    l_side, s_side = _pair(server, caster.noise_public)
    station = BroadcastStation(ledger, caster, b_id)
    listener = BroadcastListener(l_side, ledger=ledger, identity=fan, broadcast_id=b_id)
    station.attach(s_side, "fan")
    try:
        assert listener.wait_hello(10)
        time.sleep(IDLE)
        assert listener.close_reason is None and station.listeners == 1
        listener.contribute(10 * PRICE)
        seq = station.send(b"news")
        got = [listener.get(timeout=10) for _ in range(2)]
        assert any(isinstance(m, BroadcastMessage) and m.seq == seq for m in got)
        listener.request("more please")
        assert station.requests.get(timeout=10).text == "more please"
    finally:
        listener.close()
        station.close()
        l_side.abort("test over")
        s_side.abort("test over")
        server.close()
        ledger.close()
