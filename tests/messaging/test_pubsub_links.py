"""Pub/sub (docs/messaging.md §4), over real DTP connections on
127.0.0.1:

1. ``attach`` refuses a non-blocking stream (timeout 0): its first ``recv`` raised
   BlockingIOError, the link closed at once and ``publish`` went on returning ids of
   messages that reached nobody.
2. A link's default name is never reused: it counted the live links, so a link attached
   after one closed had the name of another live link.
3. The waits (``Subscription.get``, ``PubSubNode.wait_for_interest``) refuse a finite
   timeout past ``threading.TIMEOUT_MAX`` with an OverflowError naming the limit, as
   ``DTPSocket.settimeout`` does, not a bare one from inside ``queue``.
4. The writer's wake-up (a change of interest) does not take the place of a message in
   the link's queue: with ``link_queue=1`` a message to a peer that reads everything was
   dropped, and reported to it as DROPPED.
5. ``hop_limited`` is counted under the node's lock, as the node's other counters are.
6. A frame that a link's reader is handling when the link closes is neither delivered
   nor forwarded once ``close`` has returned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

import dtp.socket
from dtp.errors import TunnelError
from dtp.identity.keys import HostIdentity
from dtp.messaging import pubsub
from dtp.messaging._framing import decode_body, read_frames
from dtp.messaging.pubsub import PubSubNode
from tests.messaging.mesh import Mesh
from tests.messaging.stream_pairs import Streams
from tests.messaging.stream_pairs import streams as streams  # the fixture
from tests.support.polling import wait_for

PUBLISH = 10
DROPPED = 11


# -- 1. a non-blocking stream ------------------------------------------------------------------


def test_attach_refuses_a_non_blocking_stream(streams: Streams) -> None:
    node = PubSubNode("n")
    try:
        client, _ = streams.pair()
        client.setblocking(False)
        with pytest.raises(ValueError, match="non-blocking"):
            node.attach(client)
        assert node.links == []
        # refused before it was read: once blocking, the same stream makes a link
        client.setblocking(True)
        link = node.attach(client)
        assert node.links == [link]
        assert not link.closed.is_set()
    finally:
        node.close()


# -- 2. default link names ---------------------------------------------------------------------


def test_a_default_link_name_is_never_reused(streams: Streams) -> None:
    node = PubSubNode("n")
    try:
        first = node.attach(streams.pair()[0])
        second = node.attach(streams.pair()[0])
        first.close()
        third = node.attach(streams.pair()[0])
        names = [link.name for link in node.links]
        assert names == [second.name, third.name]
        assert len(set(names)) == 2
        assert sorted(node.interested_links("t")) == sorted(names)
        assert third.name not in (first.name, second.name)
    finally:
        node.close()


# -- 3. waits past TIMEOUT_MAX -----------------------------------------------------------------


def test_waits_refuse_a_timeout_past_the_longest_a_lock_takes() -> None:
    node = PubSubNode("n")
    try:
        sub = node.subscribe("t")
        limit = f"at most {threading.TIMEOUT_MAX:.0f} s"
        too_long = threading.TIMEOUT_MAX * 2
        with pytest.raises(OverflowError, match=limit):
            sub.get(timeout=too_long)
        with pytest.raises(OverflowError, match=limit):
            node.wait_for_interest("t", timeout=too_long)
        # the limit itself is a wait: these return at once, with nothing to wait for
        node.publish("t", b"m")
        assert sub.get(timeout=threading.TIMEOUT_MAX).data == b"m"
        assert node.wait_for_interest("t", count=0, timeout=threading.TIMEOUT_MAX)
    finally:
        node.close()


# -- 4. the writer's wake-up and the link's queue ----------------------------------------------


class _GatedStream:
    """A stream whose writes wait while ``gate`` is clear: the link's writer is then busy
    with a frame, as with any peer while a write is in flight."""

    def __init__(self, inner: dtp.socket.DTPSocket) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()

    def recv(self, size: int) -> bytes:
        return self.inner.recv(size)

    def sendall(self, data: bytes) -> None:
        assert self.gate.wait(30), "the test never opened the gate"
        self.inner.sendall(data)


def _read_all(sock: dtp.socket.DTPSocket, frames: list[Any], stop: threading.Event) -> None:
    """Decode every frame ``sock`` brings into ``frames``, until it ends."""
    try:
        for body in read_frames(sock, 1 << 24, stop):
            if isinstance(body, bytes):
                frames.append(decode_body(body))
    except Exception:  # the stream ends with the test: nothing more to read
        pass


def test_a_change_of_interest_takes_no_place_of_a_message(streams: Streams) -> None:
    node = PubSubNode("n", link_queue=1)
    ours, theirs = streams.pair()
    stream = _GatedStream(ours)
    frames: list[Any] = []
    stop = threading.Event()
    reader = threading.Thread(target=_read_all, args=(theirs, frames, stop), daemon=True)
    reader.start()
    try:
        link = node.attach(stream, "n->peer")
        # the link's first frame (its interest, none) went: the writer waits for frames
        assert wait_for(lambda: len(frames) >= 1, timeout=10)
        stream.gate.clear()
        node.publish("t", b"first")
        # the writer took it and waits to write it: the queue's one place is free
        assert wait_for(lambda: link._out.qsize() == 0, timeout=10)
        sub = node.subscribe("news")  # a change of interest: the writer is woken
        node.publish("t", b"second")  # the place of the queue: not taken by the wake-up
        assert link.dropped == 0
        node.publish("t", b"third")  # the queue is still bounded: this one is dropped
        assert link.dropped == 1
        stream.gate.set()

        def published() -> list[bytes]:
            return [f[4] for f in list(frames) if f[0] == PUBLISH]

        assert wait_for(lambda: published() == [b"first", b"second"], timeout=10), published()
        # the interest went too, and the one drop was reported
        assert wait_for(lambda: any(f == [DROPPED, 1] for f in list(frames)), timeout=10)
        assert wait_for(
            lambda: any(f[0] == 12 and ["news", 0] in f[1] for f in list(frames)), timeout=10
        )
        sub.close()
    finally:
        stream.gate.set()
        stop.set()
        node.close()


# -- 5. hop_limited under the node's lock ------------------------------------------------------


class _LockedCounts(PubSubNode):
    """A node that notes, at each change of ``hop_limited``, whether its lock was held
    (a quiet node: nobody else holds it then)."""

    held: list[bool]

    @property  # type: ignore[override]
    def hop_limited(self) -> int:
        return self._hop_limited

    @hop_limited.setter
    def hop_limited(self, value: int) -> None:
        if value:  # (the constructor's 0 is set before anyone else has the node)
            self.held.append(self._lock.locked())
        self._hop_limited = value


def test_hop_limited_is_counted_under_the_nodes_lock(streams: Streams) -> None:
    publisher = PubSubNode("p")
    node = _LockedCounts("n")
    node.held = []
    try:
        a, b = streams.pair()
        publisher.attach(a, "p->n")
        node.attach(b, "n<-p")
        sub = node.subscribe("t")
        assert publisher.wait_for_interest("t", timeout=10)
        publisher.publish("t", b"last hop", hops=1)
        assert sub.get(timeout=10).data == b"last hop"
        assert wait_for(lambda: node.hop_limited == 1, timeout=10)
        assert node.held == [True]
    finally:
        node.close()
        publisher.close()


# -- 6. a frame handled while its link closes --------------------------------------------------


class _Gate:
    """Holds a node's ``_route`` of one topic (in its link's reader) until released."""

    def __init__(self, route: Callable[..., None], topic: str) -> None:
        self.route = route
        self.topic = topic
        self.entered = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()

    def __call__(self, message_id: bytes, topic: str, *rest: Any) -> None:
        if topic != self.topic:
            self.route(message_id, topic, *rest)
            return
        self.entered.set()
        assert self.release.wait(30), "the test never released the frame"
        try:
            self.route(message_id, topic, *rest)
        finally:
            self.done.set()


def test_a_frame_handled_while_its_link_closes_is_not_delivered_or_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mesh = Mesh(3, [(0, 1), (1, 2)])  # node 1 between 0 and 2
    try:
        n0, n1, n2 = mesh.nodes
        sub1 = n1.subscribe("slow")
        n2.subscribe("slow")
        assert n0.wait_for_interest("slow", timeout=10)
        assert n1.wait_for_interest("slow", timeout=10)  # node 2's, toward node 0
        from_0 = next(link for link in n1.links if link.name == "1<-0")
        to_2 = next(link for link in n1.links if link.name == "1->2")
        forwarded: list[bytes] = []
        offer = to_2.offer

        def spy(frame: bytes) -> bool:
            forwarded.append(frame)
            return offer(frame)

        monkeypatch.setattr(to_2, "offer", spy)
        gate = _Gate(n1._route, "slow")
        monkeypatch.setattr(n1, "_route", gate)

        message_id = n0.publish("slow", b"in flight")
        assert gate.entered.wait(10)  # node 1's reader is handling the frame
        closer = threading.Thread(target=from_0.close, daemon=True)
        closer.start()
        assert wait_for(from_0.closed.is_set, timeout=10)
        gate.release.set()
        closer.join(10)
        assert not closer.is_alive()
        assert gate.done.wait(10)
        assert sub1.qsize() == 0, "a closed link delivered"
        assert forwarded == [], "a closed link forwarded"
        # nor remembered: a copy coming from another peer would be a new message
        assert pubsub._message_key(message_id, "slow", b"in flight") not in n1._seen
    finally:
        mesh.close()


def test_close_returns_once_the_frame_being_handled_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mesh = Mesh(2, [(0, 1)])
    try:
        n0, n1 = mesh.nodes
        sub = n1.subscribe("slow")
        assert n0.wait_for_interest("slow", timeout=10)
        link = n1.links[0]
        deliver = n1._deliver
        entered, release = threading.Event(), threading.Event()

        def held(topic: str, *rest: Any) -> None:
            # past the checks: the frame is being delivered when the link closes
            if topic == "slow":
                entered.set()
                assert release.wait(30), "the test never released the frame"
            deliver(topic, *rest)

        monkeypatch.setattr(n1, "_deliver", held)
        n0.publish("slow", os.urandom(8))
        assert entered.wait(10)
        after_close: list[int] = []

        def close() -> None:
            link.close()
            after_close.append(sub.qsize())  # what was delivered when close() returned

        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        # close() waits for the frame: it has not returned a second later (the old
        # close() returned at once, and the frame was delivered afterwards)
        closer.join(1.0)
        release.set()
        closer.join(10)
        assert not closer.is_alive()
        assert after_close == [1]
        assert sub.qsize() == 1
        assert link not in n1.links
    finally:
        mesh.close()


class _BrokenLedger:
    """A ledger whose reads fail below the chain layer (a database error)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_connection(self, connection_id: str) -> Any:
        raise self.error

    def get_escrow(self, escrow_id: str) -> Any:
        raise self.error

    def close_connection(self, *args: object) -> None:
        raise AssertionError("not reached")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    "error",
    [OSError(5, "Input/output error"), sqlite3.OperationalError("disk I/O error")],
    ids=["oserror", "sqlite"],
)
def test_a_ledger_failure_fails_the_link_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    from dtp.daemon._config import Backend, ForwardConfig
    from dtp.daemon._forwarder import Forwarder, close_on_ledger
    from dtp.daemon._state import StatusBook
    from dtp.hostid._address import HostAddress
    from dtp.ledger.interface import Ledger

    identity = HostIdentity.generate()
    ledger = cast(Ledger, _BrokenLedger(error))
    closed: list[bool] = []
    writer = types.SimpleNamespace(
        connection_id="0x" + "ef" * 32,
        escrow_id="0x" + "ee" * 32,
        close=lambda: closed.append(True),
    )

    async def connect_forward(*args: object, **kwargs: object) -> tuple[object, object]:
        return object(), writer

    async def answered(*args: object) -> bool:
        return True  # (the target's probe: this is about the escrow's read after the open)

    monkeypatch.setattr("dtp.daemon._forwarder.connect_forward", connect_forward)
    monkeypatch.setattr("dtp.daemon._forwarder.probe_target", answered)
    config = ForwardConfig("fwd", Backend("127.0.0.1", 0), HostAddress("0x" + "12" * 32, 7))
    forwarder = Forwarder(config, ledger, identity, StatusBook(tmp_path / "state"))
    records = _Records()
    log = logging.getLogger("dtp.daemon._forwarder")
    log.addHandler(records)
    try:
        # the close alone: logged, not raised (a watcher's task ended with it)
        asyncio.run(close_on_ledger(ledger, identity, writer.connection_id))
        assert [r.getMessage() for r in records.records] == ["ledger close failed"]
        # the link: the TunnelError _tunnel reports, not the ledger's exception
        with pytest.raises(TunnelError, match="cannot read connection"):
            asyncio.run(forwarder._open_link([]))
    finally:
        log.removeHandler(records)
    assert closed == [True]
    assert forwarder._links == set() and forwarder._watchers == set()
