"""Discovery: services published on a LocalLedger are found by host and by listing the
events; announcements gossiped across a 3-peer DTP mesh reach every peer once, forged or
tampered ones are rejected, and expired ones are dropped."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.discovery import (
    MAX_CLOCK_SKEW_MS,
    MAX_TTL_MS,
    DiscoveryGossip,
    ServiceRecord,
    decode_announcement,
    encode_announcement,
    list_services,
    lookup_host,
    publish_service,
)
from dtp.messaging.pubsub import PubSubNode
from tests.messaging.mesh import Mesh

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=0)


@pytest.fixture
def ledger() -> LocalLedger:
    return LocalLedger(":memory:", clock_ms=1_000_000)


def test_publish_on_ledger_then_lookup(ledger: LocalLedger) -> None:
    alice, bob = HostIdentity.generate(), HostIdentity.generate()
    ha = ledger.create_host(alice, alice.noise_public)
    hb = ledger.create_host(bob, bob.noise_public)
    publish_service(ledger, alice, ha, 80, "http", SLA, endpoints=[b"udp:127.0.0.1:4000"])
    publish_service(ledger, alice, ha, 81, "jsonrpc", SLA)
    publish_service(ledger, bob, hb, 80, "http", SLA)
    assert lookup_host(ledger, ha) == [
        ServiceRecord(ha, 80, "http", (b"udp:127.0.0.1:4000",)),
        ServiceRecord(ha, 81, "jsonrpc", (b"udp:127.0.0.1:4000",)),
    ]
    assert lookup_host(ledger, ha, "jsonrpc") == [
        ServiceRecord(ha, 81, "jsonrpc", (b"udp:127.0.0.1:4000",))
    ]
    assert {(r.host_id, r.port) for r in list_services(ledger, "http")} == {(ha, 80), (hb, 80)}
    ledger.remove_service(alice, ha, 80)
    assert {(r.host_id, r.port) for r in list_services(ledger, "http")} == {(hb, 80)}
    assert lookup_host(ledger, "0x" + "00" * 32) == []
    with pytest.raises(E.DiscoveryError):
        publish_service(ledger, alice, ha, 82, "", SLA)


@pytest.fixture
def mesh3() -> Iterator[Mesh]:
    m = Mesh(3, [(0, 1), (1, 2)])  # a line: 0 and 2 only meet through 1
    yield m
    m.close()


def test_gossip_across_three_peers(ledger: LocalLedger, mesh3: Mesh) -> None:
    alice = HostIdentity.generate()
    ha = ledger.create_host(alice, alice.noise_public)
    gossips = [DiscoveryGossip(node, ledger=ledger) for node in mesh3.nodes]
    try:
        mesh3.settle("dtp/discovery")
        ann = gossips[0].announce(alice, ha, [(80, "http"), (81, "jsonrpc")], [b"ep"])
        for g in gossips[1:]:
            got = g.wait_for(ha, 10)
            assert got == ann
        assert gossips[2].lookup("jsonrpc") == [ServiceRecord(ha, 81, "jsonrpc", (b"ep",))]
        # a re-announcement supersedes; an old one replayed is a duplicate
        ledger.advance_clock(1000)
        newer = gossips[0].announce(alice, ha, [(80, "http")])
        old = encode_announcement(alice, ha, [(9, "old")], [], 1_000_000, 60_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and gossips[2].host(ha) != newer:
            time.sleep(0.02)
        assert gossips[2].host(ha) == newer
        assert gossips[2].receive(old) is None and gossips[2].duplicates >= 1
        assert gossips[2].lookup() == [ServiceRecord(ha, 80, "http", ())]
    finally:
        for g in gossips:
            g.close()


def test_forged_announcements_rejected(ledger: LocalLedger) -> None:
    alice, mallory = HostIdentity.generate(), HostIdentity.generate()
    ha = ledger.create_host(alice, alice.noise_public)
    now = ledger.clock_ms()
    # mallory signs for alice's host: valid signature, wrong authority
    forged = encode_announcement(mallory, ha, [(80, "http")], [], now, 60_000)
    with pytest.raises(E.ForgedAnnouncement):
        decode_announcement(forged, now, ledger)
    # tampered body: the signature no longer covers it
    body, sig = msgpack.unpackb(encode_announcement(alice, ha, [(80, "http")], [], now, 60_000))
    tampered = msgpack.packb([body.replace(b"http", b"evil"), sig], use_bin_type=True)
    with pytest.raises(E.ForgedAnnouncement):
        decode_announcement(tampered, now, ledger)
    with pytest.raises(E.MalformedMessage):
        decode_announcement(b"\xc1", now)
    g = DiscoveryGossip(PubSubNode("alone"), ledger=ledger)
    try:
        assert g.receive(forged) is None and g.receive(tampered) is None
        assert g.receive(b"junk") is None
        assert (g.forged, g.malformed, g.lookup()) == (2, 1, [])
    finally:
        g.close()


def test_expiry(ledger: LocalLedger) -> None:
    alice = HostIdentity.generate()
    ha = ledger.create_host(alice, alice.noise_public)
    now = ledger.clock_ms()
    g = DiscoveryGossip(PubSubNode("alone"), ledger=ledger)
    try:
        ann = encode_announcement(alice, ha, [(80, "http")], [], now, 5_000)
        assert g.receive(ann) is not None
        assert g.lookup("http") == [ServiceRecord(ha, 80, "http", ())]
        ledger.advance_clock(5_000)
        assert g.lookup("http") == [] and g.host(ha) is None
        stale = encode_announcement(alice, ha, [(80, "http")], [], now + 1, 4_000)
        assert g.receive(stale) is None and g.expired == 1
        with pytest.raises(E.ExpiredAnnouncement):
            decode_announcement(stale, ledger.clock_ms())
        with pytest.raises(E.DiscoveryError):
            encode_announcement(alice, ha, [], [], now, 0)
    finally:
        g.close()


def test_gossip_thread_ends_when_its_node_closes() -> None:
    # the thread waits in Subscription.get() without polling: closing the node (or the
    # gossip) must wake it
    node = PubSubNode("alone")
    g = DiscoveryGossip(node)
    try:
        time.sleep(0.05)
        assert g._thread.is_alive()
        node.close()
        g._thread.join(5)
        assert not g._thread.is_alive()
    finally:
        g.close()
    g = DiscoveryGossip(PubSubNode("alone"))
    g.close()
    assert not g._thread.is_alive()


def test_announcements_issued_in_the_future_are_refused() -> None:
    # one issued a year ahead is refused: kept, it would live for a year, not a day,
    # and the host's real announcements (issued earlier) would count as its duplicates
    now = [1_000_000_000]
    g = DiscoveryGossip(PubSubNode("alone"), clock_ms=lambda: now[0])
    host = "0x" + "ab" * 32
    real, skewed = HostIdentity.generate(), HostIdentity.generate()
    year = 365 * 24 * 3600 * 1000
    try:
        for ahead in (year, MAX_CLOCK_SKEW_MS + 1):
            future = encode_announcement(
                skewed, host, [(1, "evil")], [], now[0] + ahead, MAX_TTL_MS
            )
            assert g.receive(future) is None
            with pytest.raises(E.ExpiredAnnouncement):
                decode_announcement(future, now[0])
        assert g.expired == 2 and g.lookup() == []
        ann = g.receive(encode_announcement(real, host, [(1, "real")], [], now[0], 600_000))
        assert ann is not None and g.duplicates == 0
        # a sender's clock slightly ahead is fine
        ahead = encode_announcement(real, host, [(2, "real")], [], now[0] + MAX_CLOCK_SKEW_MS, 1)
        assert g.receive(ahead) is not None
        assert g.lookup() == [ServiceRecord(host, 2, "real", ())]
    finally:
        g.close()
