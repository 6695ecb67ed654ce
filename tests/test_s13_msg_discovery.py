"""Discovery gossip, session 13: ``wait_for`` waits past an expired announcement for the
host's next one, the gossip thread outlives a ledger that fails for one announcement, and
a ledger outage is not counted as a forgery."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dtp.chain.local import LocalLedger
from dtp.errors import ChainError
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.discovery import (
    DEFAULT_TOPIC,
    Announcement,
    DiscoveryGossip,
    decode_announcement,
    encode_announcement,
)
from dtp.messaging.pubsub import PubSubNode

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
