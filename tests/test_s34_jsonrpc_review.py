"""Review of the JSON-RPC service kind and discovery (session 34).

Discovery: a host that re-announces before its clock has moved on by a millisecond (a
frozen or coarse clock: a ledger clock ticks once per Sui checkpoint) made an
announcement with the same issue time, which its own cache and every peer dropped as
a duplicate while announce() returned it; and the gossip thread read the clock (with a
ledger, a request to the full node) for every message, garbage and forgeries too."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest

from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
from dtp.messaging.discovery import DEFAULT_TOPIC, DiscoveryGossip, encode_announcement
from dtp.messaging.pubsub import PubSubNode

NOW = 1_000_000


@pytest.fixture
def node() -> Iterator[PubSubNode]:
    n = PubSubNode("n")
    yield n
    n.close()


def test_a_re_announcement_in_the_same_millisecond_is_recorded_and_gossiped(
    node: PubSubNode,
) -> None:
    gossip = DiscoveryGossip(node, clock_ms=lambda: NOW)  # (the clock does not move)
    peer_node = PubSubNode("peer")
    peer = DiscoveryGossip(peer_node, clock_ms=lambda: NOW)
    sub = node.subscribe(DEFAULT_TOPIC)
    alice = HostIdentity.generate()
    try:
        first = gossip.announce(alice, "h", [(80, "http")])
        second = gossip.announce(alice, "h", [(81, "jsonrpc")])
        assert second.issued_ms > first.issued_ms
        got = gossip.host("h")
        assert got is not None and got.services == ((81, "jsonrpc"),)
        assert gossip.duplicates == 0
        # a peer takes both, in order, the second replacing the first
        sent = [sub.get(timeout=5).data, sub.get(timeout=5).data]
        assert peer.receive(sent[0]) is not None
        assert peer.receive(sent[1]) == second
        assert peer.duplicates == 0
        got = peer.host("h")
        assert got is not None and got.services == ((81, "jsonrpc"),)
    finally:
        sub.close()
        peer.close()
        peer_node.close()
        gossip.close()


def test_a_re_announcement_on_a_frozen_ledger_clock_is_recorded(node: PubSubNode) -> None:
    ledger = LocalLedger(":memory:", clock_ms=NOW)
    alice = HostIdentity.generate()
    host = ledger.create_host(alice, alice.noise_public)
    gossip = DiscoveryGossip(node, ledger=ledger)
    try:
        gossip.announce(alice, host, [(80, "http")])
        gossip.announce(alice, host, [(80, "http"), (81, "jsonrpc")])
        got = gossip.host(host)
        assert got is not None and got.services == ((80, "http"), (81, "jsonrpc"))
        assert [r.name for r in gossip.lookup()] == ["http", "jsonrpc"]
    finally:
        gossip.close()


def test_garbage_and_forgeries_cost_no_clock_read(node: PubSubNode) -> None:
    reads = 0

    def clock() -> int:
        # a SuiLedger's clock_ms: a request to the full node
        nonlocal reads
        reads += 1
        return NOW

    gossip = DiscoveryGossip(node, clock_ms=clock)
    alice = HostIdentity.generate()
    try:
        body, signature = msgpack.unpackb(
            encode_announcement(alice, "h", [(1, "s")], [], NOW, 60_000), raw=False
        )
        forged = msgpack.packb([body, bytes([signature[0] ^ 1]) + signature[1:]])
        for data in (b"\xc1garbage", msgpack.packb([1, 2]), forged):
            assert gossip.receive(data) is None
        assert gossip.malformed == 2 and gossip.forged == 1
        assert reads == 0
        genuine = encode_announcement(alice, "h", [(1, "s")], [], NOW, 60_000)
        assert gossip.receive(genuine) is not None
        assert reads == 1  # (a genuine one is checked against the clock, once)
    finally:
        gossip.close()
