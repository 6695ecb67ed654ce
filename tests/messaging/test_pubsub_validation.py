"""Pub/sub validation hooks and peer scores on real DTP connections (docs/messaging.md
§4.1, §4.2): accept / ignore / reject, a hook that raises or answers nonsense (ignored,
logged, the link goes on), async hooks on a private loop and on the application's loop,
graylisting and recovery on a node's virtual clock, and a cut-off peer whose score waits
for it when it reconnects."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator

import pytest

from dtp.identity.keys import HostIdentity
from dtp.messaging.pubsub import PeerMessage, ScoreParams, Verdict
from dtp.testing._loops import LoopThread
from tests.messaging.mesh import Mesh, RawPeer, drain
from tests.support.polling import wait_for


def publish(raw: RawPeer, data: bytes, topic: str = "t", message_id: bytes | None = None) -> bytes:
    message_id = os.urandom(16) if message_id is None else message_id
    raw.send([10, message_id, topic, 4, data, "raw"])
    return message_id


def by_prefix(message: PeerMessage) -> Verdict:
    if message.data.startswith(b"ok"):
        return Verdict.ACCEPT
    if message.data.startswith(b"meh"):
        return Verdict.IGNORE
    return Verdict.REJECT


@pytest.fixture
def line() -> Iterator[Mesh]:
    """Nodes 0 - 1 - 2 in a line; node 1 judges topic "t"."""
    m = Mesh(3, [(0, 1), (1, 2)])
    yield m
    m.close()


def test_accept_ignore_and_reject(line: Mesh) -> None:
    seen: list[bytes] = []

    def hook(message: PeerMessage) -> Verdict:
        seen.append(message.data)
        return by_prefix(message)

    hub = line.nodes[1]
    hub.set_validator("t", hook)
    here, there = hub.subscribe("t"), line.nodes[2].subscribe("t")
    raw = RawPeer(line, 1)
    assert hub.wait_for_interest("t", 1)
    assert line.nodes[1].interested_links("t")  # node 2's interest reached the hub
    assert wait_for(lambda: "t" in (line.nodes[1].links[1].remote or {}))
    for data in (b"ok1", b"meh1", b"bad1", b"ok2", b"meh2", b"bad2"):
        publish(raw, data)
    # only the accepted ones are delivered here and forwarded to node 2
    assert drain(here, 2) == [b"ok1", b"ok2"]
    assert drain(there, 2) == [b"ok1", b"ok2"]
    time.sleep(0.2)
    assert here.qsize() == 0 and there.qsize() == 0
    assert (hub.rejected, hub.ignored) == (2, 2)
    assert raw.link.rejected == 2
    score = hub.scores()[raw.link.peer]
    assert score.invalid == pytest.approx(2, abs=0.01)
    assert score.first_deliveries == pytest.approx(2, abs=0.01)
    assert not score.graylisted and score.links == 1
    assert len(seen) == 6

    # a copy of a rejected message is not judged again, and counts against its sender
    second = RawPeer(line, 1, "second")
    bad = publish(raw, b"bad3")
    assert wait_for(lambda: hub.rejected == 3)
    publish(second, b"bad3", message_id=bad)
    meh = publish(raw, b"meh3")
    assert wait_for(lambda: hub.ignored == 3)
    publish(second, b"meh3", message_id=meh)
    assert wait_for(lambda: second.link.rejected == 1)
    assert wait_for(lambda: hub.duplicates == 2)
    assert len(seen) == 8  # bad3 and meh3 once each
    assert hub.scores()[second.link.peer].invalid == pytest.approx(1, abs=0.01)
    assert hub.ignored == 3  # the ignored copy cost its sender nothing


def test_messages_without_a_hook_are_accepted_and_credited(line: Mesh) -> None:
    sub = line.nodes[1].subscribe("free")
    raw = RawPeer(line, 1)
    for i in range(5):
        publish(raw, bytes([i]), topic="free")
    assert len(drain(sub, 5)) == 5
    score = line.nodes[1].scores()[raw.link.peer]
    assert score.first_deliveries == pytest.approx(5, abs=0.01) and score.score > 4.9


def test_a_hook_that_raises_counts_as_ignore_and_is_logged(
    line: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(message: PeerMessage) -> Verdict:
        if message.data == b"boom":
            raise ValueError("cannot parse")
        if message.data == b"nonsense":
            return True  # type: ignore[return-value]
        return Verdict.ACCEPT

    hub = line.nodes[1]
    hub.set_validator("t", hook)
    sub = hub.subscribe("t")
    raw = RawPeer(line, 1)
    with caplog.at_level(logging.WARNING, logger="dtp.messaging.pubsub"):
        publish(raw, b"boom")
        publish(raw, b"nonsense")
        publish(raw, b"fine")
        assert drain(sub, 1) == [b"fine"]  # the link goes on
    assert hub.ignored == 2 and hub.rejected == 0
    assert hub.validator_failures("t") == 2
    assert hub.scores()[raw.link.peer].invalid == 0  # the hook's fault, not the peer's
    text = caplog.text
    assert "raised ValueError: cannot parse" in text
    assert "returned True, not a Verdict" in text
    assert not raw.link.closed.is_set()


def test_async_hooks_on_a_private_loop_and_on_the_applications_loop(
    line: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    app = LoopThread()
    try:
        allowed: set[bytes] = {b"a1", b"b1"}
        guard = asyncio.Lock()  # (bound to the app's loop when first used there)

        async def on_private(message: PeerMessage) -> Verdict:
            await asyncio.sleep(0.001)
            return Verdict.ACCEPT if message.data in allowed else Verdict.REJECT

        async def on_app_loop(message: PeerMessage) -> Verdict:
            assert asyncio.get_running_loop() is app.loop
            async with guard:
                if message.data == b"slow":
                    await asyncio.sleep(5)
                return Verdict.ACCEPT if message.data in allowed else Verdict.REJECT

        hub = line.nodes[1]
        hub.set_validator("a", on_private)
        hub.set_validator("b", on_app_loop, loop=app.loop, timeout=0.2)
        subs = {t: hub.subscribe(t) for t in ("a", "b")}
        raw = RawPeer(line, 1)
        with caplog.at_level(logging.WARNING, logger="dtp.messaging.pubsub"):
            for t in ("a", "b"):
                publish(raw, f"{t}0".encode(), topic=t)
                publish(raw, f"{t}1".encode(), topic=t)
            publish(raw, b"slow", topic="b")
            publish(raw, b"b1-after", topic="b")
            allowed.add(b"b1-after")
            assert drain(subs["a"], 1) == [b"a1"]
            assert drain(subs["b"], 2) == [b"b1", b"b1-after"]
        assert hub.rejected == 2  # a0, b0
        assert hub.ignored == 1 and hub.validator_failures("b") == 1  # slow: timed out
        assert "raised TimeoutError" in caplog.text
    finally:
        app.close(cancel=True)


def test_graylisting_and_recovery_run_on_the_nodes_clock() -> None:
    now = [1000.0]
    # never cut off here: what graylisting itself does
    params = ScoreParams(disconnect_threshold=-1e9)
    mesh = Mesh(1, [], scoring=params, clock=lambda: now[0])
    try:
        node = mesh.nodes[0]
        node.set_validator("t", by_prefix)
        sub = node.subscribe("t")
        raw = RawPeer(mesh, 0)
        for i in range(11):
            publish(raw, b"bad%d" % i)
        assert wait_for(lambda: node.rejected == 11)
        assert node.scores()[raw.link.peer].graylisted
        publish(raw, b"ok, but graylisted")
        assert wait_for(lambda: raw.link.graylisted_drops == 1)
        assert sub.qsize() == 0  # dropped unread
        assert node.rejected == 11  # not even judged
        # the drop counted as one more invalid message: 12 now (no time has passed)
        assert node.scores()[raw.link.peer].invalid == 12
        now[0] += 60  # one half-life: 6 left, -36, off the graylist
        publish(raw, b"ok again")
        assert drain(sub, 1) == [b"ok again"]
        score = node.scores()[raw.link.peer]
        assert not score.graylisted and score.invalid == pytest.approx(6)
        assert score.first_deliveries == 1
    finally:
        mesh.close()


def test_a_cut_off_peer_finds_its_score_when_it_reconnects(line: Mesh) -> None:
    hub = line.nodes[1]
    hub.set_validator("t", by_prefix)
    sub = hub.subscribe("t")
    who = HostIdentity.generate()
    raw = RawPeer(line, 1, "flooder", identity=who)
    assert raw.link.peer == who.noise_public.hex()
    for i in range(25):
        try:
            publish(raw, b"bad%d" % i)
        except Exception:
            break  # cut off mid-burst: the connection was aborted
    assert wait_for(lambda: raw.link.closed.is_set())
    assert hub.rejected + raw.link.graylisted_drops >= 21
    assert raw.link not in hub.links
    score = hub.scores()[who.noise_public.hex()]
    assert score.graylisted and score.links == 0
    # its connection is gone: once the flooder's side has read the end (its reader
    # thread takes the node's CLOSE, in its own time), its next writes fail rather than
    # pile up in the socket buffers
    assert wait_for(lambda: raw.sock._engine.session.terminated is not None)
    with pytest.raises(Exception):  # noqa: B017 (whichever the transport raises)
        for _ in range(1000):
            publish(raw, b"x" * 1000)
    back = RawPeer(line, 1, "again", identity=who)
    publish(back, b"ok after reconnecting")
    assert wait_for(lambda: back.link.graylisted_drops == 1)
    assert sub.qsize() == 0
