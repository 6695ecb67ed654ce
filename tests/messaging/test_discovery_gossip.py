"""Discovery gossip: ``wait_for`` waits past an expired announcement for the
host's next one, the gossip thread outlives a ledger that fails for one announcement, and
a ledger outage is not counted as a forgery.

The JSON-RPC service kind and discovery.

Discovery: a host that re-announces before its clock has moved on by a millisecond (a
frozen or coarse clock: a ledger clock ticks once per Sui checkpoint) made an
announcement with the same issue time, which its own cache and every peer dropped as
a duplicate while announce() returned it; and the gossip thread read the clock (with a
ledger, a request to the full node) for every message, garbage and forgeries too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.discovery import (
    DEFAULT_TOPIC,
    Announcement,
    DiscoveryGossip,
    decode_announcement,
    encode_announcement,
)
from dtp.messaging.pubsub import PubSubNode
from tests.messaging.mesh import Mesh
from tests.messaging.rpc_world import PROMPT

HOST = "0x" + "ab" * 32
OTHER = "0x" + "cd" * 32


def _unavailable() -> ChainError:
    # what SuiLedger raises when its node cannot be reached (sui_client.LedgerUnavailable)
    return ChainError("the node cannot be reached", name="LedgerUnavailable", module="sui")


@pytest.fixture
def node() -> Iterator[PubSubNode]:
    n = PubSubNode("n")
    yield n
    n.close()


def test_wait_for_waits_past_an_expired_announcement(node: PubSubNode) -> None:
    now = 1_000_000
    waiter_looked = threading.Event()

    def clock() -> int:
        if threading.current_thread().name == "waiter":
            waiter_looked.set()  # the waiter has seen the cached announcement
        return now

    gossip = DiscoveryGossip(node, clock_ms=clock)
    try:
        alice = HostIdentity.generate()
        assert gossip.receive(encode_announcement(alice, HOST, [(1, "old")], [], now, 1_000))
        now += 5_000  # the cached announcement has expired
        got: list[Announcement | None] = []
        waiter = threading.Thread(
            target=lambda: got.append(gossip.wait_for(HOST, 10)), name="waiter"
        )
        waiter.start()
        assert waiter_looked.wait(10)
        fresh = gossip.receive(encode_announcement(alice, HOST, [(1, "new")], [], now, 60_000))
        waiter.join(10)
        assert not waiter.is_alive()
        assert got == [fresh] and fresh is not None and fresh.services == ((1, "new"),)
    finally:
        gossip.close()


def test_wait_for_still_times_out_on_an_expired_announcement(node: PubSubNode) -> None:
    now = [1_000_000]
    gossip = DiscoveryGossip(node, clock_ms=lambda: now[0])
    try:
        alice = HostIdentity.generate()
        assert gossip.receive(encode_announcement(alice, HOST, [(1, "s")], [], now[0], 1_000))
        now[0] += 5_000
        assert gossip.host(HOST) is None
        assert gossip.wait_for(HOST, 0.05) is None
    finally:
        gossip.close()


def test_the_gossip_thread_outlives_a_failing_clock(node: PubSubNode) -> None:
    failures = 1

    def clock() -> int:
        nonlocal failures
        if failures:
            failures -= 1
            raise _unavailable()  # a SuiLedger's clock_ms reads the Clock object
        return 1_000_000

    gossip = DiscoveryGossip(node, clock_ms=clock)
    try:
        alice = HostIdentity.generate()
        for host in (HOST, OTHER):
            node.publish(
                DEFAULT_TOPIC, encode_announcement(alice, host, [(1, "s")], [], 1_000_000, 60_000)
            )
        # the first announcement could not be checked; the second still is
        assert gossip.wait_for(OTHER, 10) is not None
        assert gossip.unchecked == 1 and gossip.host(HOST) is None
    finally:
        gossip.close()


def test_a_ledger_outage_is_not_a_forged_announcement(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = LocalLedger(":memory:", clock_ms=1_000_000)
    try:
        alice = HostIdentity.generate()
        host = ledger.create_host(alice, alice.noise_public)
        data = encode_announcement(alice, host, [(1, "s")], [], 1_000_000, 60_000)

        def down(host_id: str) -> object:
            raise _unavailable()

        monkeypatch.setattr(ledger, "get_host", down)
        with pytest.raises(ChainError) as caught:
            decode_announcement(data, 1_000_000, ledger)
        assert not isinstance(caught.value, E.MessagingError)
        monkeypatch.undo()
        assert decode_announcement(data, 1_000_000, ledger).host_id == host
        ghost = encode_announcement(alice, "0x" + "77" * 32, [(1, "s")], [], 1_000_000, 60_000)
        with pytest.raises(E.ForgedAnnouncement):
            decode_announcement(ghost, 1_000_000, ledger)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("host", "services", "endpoints", "issued", "ttl"),
    [
        (HOST, [(True, "s")], [], 1_000, 60_000),  # a bool port: every receiver drops it
        (HOST, [("80", "s")], [], 1_000, 60_000),  # was a TypeError from <=
        (HOST, [(1, "\ud800")], [], 1_000, 60_000),  # was UnicodeEncodeError
        (HOST, [(1, "s")], ["\ud800"], 1_000, 60_000),
        (HOST, [(1, "s")], [5], 1_000, 60_000),  # was five zero bytes, announced
        ("0x" + "a" * 200, [(1, "s")], [], 1_000, 60_000),  # receivers take <= 128
        (5, [(1, "s")], [], 1_000, 60_000),  # was AttributeError
        (HOST, [(1, "s")], [], 1_000.5, 60_000),  # a float time: dropped by receivers
        (HOST, [(1, "s")], [], -1, 60_000),
        (HOST, [(1, "s")], [], 1_000, 60_000.0),
    ],
)
def test_encode_announcement_refuses_what_receivers_would(
    host: object, services: list, endpoints: list, issued: object, ttl: object
) -> None:
    alice = HostIdentity.generate()
    with pytest.raises(E.DiscoveryError):
        encode_announcement(alice, host, services, endpoints, issued, ttl)  # type: ignore[arg-type]


def test_a_good_announcement_still_round_trips() -> None:
    alice = HostIdentity.generate()
    data = encode_announcement(
        alice, HOST, [(0, "a"), (65535, "b" * 64)], ["tcp://h:1", b"\x00raw"], 0, 1
    )
    ann = decode_announcement(data, 0)
    assert ann.services == ((0, "a"), (65535, "b" * 64))
    assert ann.endpoints == (b"tcp://h:1", b"\x00raw")


NOW = 1_000_000


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
    for _ in range(5):  # (five rounds: a race with the gossip thread would show in each)
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
