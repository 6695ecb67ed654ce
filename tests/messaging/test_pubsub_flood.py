"""A peer flooding invalid messages (docs/messaging.md §4.2): three pub/sub nodes on real
DTP connections in one process judge topic "chat" (a message is valid when it carries
its HMAC tag), two of them publish valid messages while a raw peer of the middle node
sends 1,000 untagged ones a second. The flooder is graylisted (with the default scores
also cut off) and every valid message reaches every subscriber, none lost."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time

import pytest

from dtp.messaging.pubsub import PeerMessage, ScoreParams, Verdict
from tests.messaging.mesh import Mesh, RawPeer, drain

KEY = b"chat key"
RATE = 1000  # invalid messages a second
SECONDS = 2.0
VALID = 150  # per honest publisher


def tag(payload: bytes) -> bytes:
    return payload + hmac.new(KEY, payload, hashlib.sha256).digest()[:16]


class Judge:
    """The validator of topic "chat", counting what it saw by sender."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, message: PeerMessage) -> Verdict:
        with self._lock:
            self.calls[message.link] = self.calls.get(message.link, 0) + 1
        payload, mac = message.data[:-16], message.data[-16:]
        good = hmac.compare_digest(tag(payload)[-16:], mac) and len(message.data) > 16
        return Verdict.ACCEPT if good else Verdict.REJECT


def flood(raw: RawPeer, stop: threading.Event, sent: list[int]) -> None:
    """RATE untagged messages a second, in batches of 10, until ``stop`` or the
    connection fails (the node aborted it)."""
    start = time.monotonic()
    n = 0
    try:
        while not stop.is_set():
            for _ in range(10):
                raw.send([10, os.urandom(16), "chat", 8, os.urandom(40), "flooder"])
                n += 1
            ahead = start + n / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    except Exception:
        pass  # cut off
    sent.append(n)


def publish_valid(mesh: Mesh, at: int, out: list[bytes]) -> None:
    for i in range(VALID):
        data = tag(f"n{at}-{i}".encode())
        mesh.nodes[at].publish("chat", data)
        out.append(data)
        time.sleep(SECONDS / VALID)


@pytest.mark.parametrize("cut_off", [True, False], ids=["defaults", "graylist-only"])
def test_a_flooding_peer_is_graylisted_and_valid_traffic_is_not_lost(
    cut_off: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # graylist-only: a disconnect threshold out of reach, so the flooder stays linked,
    # graylisted, and sends its 1,000 a second all along
    params = ScoreParams() if cut_off else ScoreParams(disconnect_threshold=-1e12)
    mesh = Mesh(3, [(0, 1), (1, 2), (0, 2)], scoring=params)
    try:
        judges = [Judge() for _ in mesh.nodes]
        for node, judge in zip(mesh.nodes, judges, strict=True):
            node.set_validator("chat", judge)
        subs = [node.subscribe("chat", maxsize=10_000) for node in mesh.nodes]
        mesh.settle("chat")
        raw = RawPeer(mesh, 1, "flooder")
        hub = mesh.nodes[1]
        stop = threading.Event()
        sent: list[int] = []
        valid: list[bytes] = []
        with caplog.at_level(logging.WARNING, logger="dtp.messaging.pubsub"):
            threads = [
                threading.Thread(target=flood, args=(raw, stop, sent)),
                threading.Thread(target=publish_valid, args=(mesh, 0, valid)),
                threading.Thread(target=publish_valid, args=(mesh, 2, valid)),
            ]
            for t in threads:
                t.start()
            threads[1].join(30)
            threads[2].join(30)
            stop.set()
            threads[0].join(30)
            # every valid message reaches every subscriber, once
            for sub in subs:
                got = drain(sub, 2 * VALID, timeout=15)
                assert sorted(got) == sorted(valid)
                assert sub.dropped == 0
            time.sleep(0.2)
            assert all(sub.qsize() == 0 for sub in subs)

        assert len(valid) == 2 * VALID
        assert f"pubsub peer {raw.link.peer} graylisted" in caplog.text
        score = hub.scores()[raw.link.peer]
        assert score.graylisted
        # judged only until the graylist: 11 messages, not thousands
        assert judges[1].calls.get("flooder", 0) == 11
        assert hub.rejected == 11
        # nothing of the flood went past the hub
        assert "flooder" not in judges[0].calls and "flooder" not in judges[2].calls
        if cut_off:
            assert raw.link.closed.is_set() and raw.link not in hub.links
            assert "below the disconnect threshold" in caplog.text
            assert sent[0] < RATE * SECONDS  # its writes failed once aborted
            assert raw.link.graylisted_drops == 10  # 11 judged + 10 unread: -441
        else:
            assert sent[0] >= RATE * SECONDS * 0.9  # it kept going all along
            assert not raw.link.closed.is_set()
            # the rest of the flood was dropped unread (the reader may still be at it)
            assert raw.link.graylisted_drops > RATE * SECONDS * 0.5
        # honest peers earned credit at the hub
        for link in hub.links:
            if link is not raw.link:
                assert hub.scores()[link.peer].score > 0
    finally:
        mesh.close()
