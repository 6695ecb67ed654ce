"""Pub/sub at scale (bench/scale.py): peers running the mesh router of
:mod:`dtp.messaging._pubsub_mesh` over the simulated links of bench/scale_sim.py, with
the real wire frames (HELLO, SUBSCRIBE, PUBLISH, GRAFT, PRUNE, IHAVE, IWANT).

Each peer does what a :class:`~dtp.messaging.pubsub.PubSubNode` does with a frame: it
decodes it, remembers a PUBLISH by the node's own seen-cache key
(:func:`~dtp.messaging.pubsub._message_key`, the id bound to a digest of topic and
data), delivers a new one, re-encodes it with one hop less and forwards it where the
router says; the router handles the control frames. Every peer subscribes to the one
topic (as in gossipsub's published evaluations), so the distance vector of interest is
one SUBSCRIBE per link and is not otherwise run here.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass

from bench.scale_sim import Network, random_regular, small_world
from dtp.messaging._framing import decode_body, encode_frame
from dtp.messaging._pubsub_mesh import MeshParams, MeshRouter, is_mesh_control
from dtp.messaging.pubsub import _PUBLISH_HEAD, PUBLISH, SUBSCRIBE, _message_key

TOPIC = "readings"
#: The hop limit messages are published with: above the mesh's diameter (the node's
#: default of 8 is not, on the small-world overlay of 1,000: 99.75 % delivered).
HOPS = 32


@dataclass
class PubSubResult:
    """One run's figures (per message and peer, over the peers counted)."""

    peers: int
    overlay: str
    loss: float
    frame_loss: bool
    churn: float
    messages: int
    delivery: float
    p50: float
    p99: float
    amplification: float
    bytes_per_peer: float
    cpu_per_message: float
    mesh_degree: float
    iwant_served: int
    left: int
    joined: int


class _Peer:
    __slots__ = ("alive", "born", "died", "index", "router", "seen")

    def __init__(self, index: int, params: MeshParams, seed: int, now: float) -> None:
        self.index = index
        self.router: MeshRouter[int] = MeshRouter(
            f"p{index}", params=params, rng=random.Random(seed), address=f"p{index}"
        )
        self.seen: dict[bytes, int] = {}
        self.alive = True
        self.born = now
        self.died = float("inf")


class PubSubRun:
    """One overlay of ``n`` peers, all subscribed to one topic; ``messages`` published
    one every ``interval`` seconds from random peers after a warm-up; ``churn``: the
    share of peers replaced per second (each leaving peer's links close, a new peer
    links to ``degree`` random ones)."""

    def __init__(
        self,
        n: int,
        *,
        overlay: str = "regular",
        degree: int = 8,
        loss: float = 0.05,
        frame_loss: bool = False,
        churn: float = 0.0,
        messages: int = 100,
        interval: float = 0.1,
        size: int = 128,
        seed: int = 1,
        params: MeshParams | None = None,
        hops: int = HOPS,
        flood: bool = False,
    ) -> None:
        """``flood``: peers of the flooding kind (no HELLO, so no mesh: each message
        goes to every neighbour that declared the topic), for comparison."""
        self.n = n
        self.hops = hops
        self.flood = flood
        self.overlay = overlay
        self.degree = degree
        self.churn = churn
        self.messages = messages
        self.interval = interval
        self.size = size
        self.params = params or MeshParams()
        self.rng = random.Random(seed)
        self.net = Network(
            seed, self._deliver, loss=loss, frame_loss=frame_loss, droppable=_is_publish
        )
        self.peers: list[_Peer] = []
        self.adj: list[set[int]] = []
        #: message id -> (publish time, publisher, {peer: first arrival})
        self.arrivals: dict[bytes, tuple[float, int, dict[int, float]]] = {}
        self.copies: dict[int, int] = {}
        self.left = self.joined = 0
        build = random_regular if overlay == "regular" else small_world
        for i, neighbours in enumerate(build(n, degree, self.rng)):
            self._add_peer(0.0)
            self.adj[i] = set(neighbours)
        for i in range(n):
            for j in self.adj[i]:
                if i < j:
                    self._link(i, j, 0.0)

    # -- peers and links ---------------------------------------------------------------------

    def _add_peer(self, now: float) -> int:
        index = len(self.peers)
        peer = _Peer(index, self.params, self.rng.getrandbits(32), now)
        self.peers.append(peer)
        self.adj.append(set())
        peer.router.join(TOPIC, now)
        self.net.at(now + self.rng.uniform(0, self.params.heartbeat), self._heartbeat, index)
        return index

    def _link(self, a: int, b: int, now: float) -> None:
        self.adj[a].add(b)
        self.adj[b].add(a)
        self.net.connect(a, b)
        for x, y in ((a, b), (b, a)):
            for to, frame in self.peers[x].router.add_peer(y, y, f"p{y}"):
                if not self.flood:
                    self.net.send(x, to, frame)
            self.net.send(x, y, encode_frame([SUBSCRIBE, [[TOPIC, 0]]]))

    def _leave(self, index: int, now: float) -> None:
        peer = self.peers[index]
        peer.alive = False
        peer.died = now
        for other in self.adj[index]:
            self.net.disconnect(index, other)
            self.adj[other].discard(index)
            self.peers[other].router.remove_peer(index, now)
        self.adj[index] = set()
        self.left += 1

    def _join(self, now: float) -> None:
        index = self._add_peer(now)
        live = [p.index for p in self.peers if p.alive and p.index != index]
        for other in self.rng.sample(live, min(self.degree, len(live))):
            self._link(index, other, now)
        self.joined += 1

    def _churn_step(self, now: float) -> None:
        count = self.churn * self.n
        whole = int(count) + (self.rng.random() < count - int(count))
        for _ in range(whole):
            live = [p.index for p in self.peers if p.alive]
            self._leave(self.rng.choice(live), now)
            self._join(now)
        self.net.at(now + 1.0, self._churn_step)

    # -- what a peer does ---------------------------------------------------------------------

    def _heartbeat(self, now: float, index: int) -> None:
        peer = self.peers[index]
        if not peer.alive:
            return
        for to, frame in peer.router.heartbeat(now):
            self.net.send(index, to, frame)
        self.net.at(now + self.params.heartbeat, self._heartbeat, index)

    def _deliver(self, src: int, dst: int, frame: bytes, now: float) -> None:
        peer = self.peers[dst]
        if not peer.alive:
            return
        message = decode_body(frame[4:])
        kind = message[0]
        router = peer.router
        out: list[tuple[int, bytes]] = []
        if kind == PUBLISH:
            _, message_id, topic, hops, data, origin = message
            self.copies[dst] = self.copies.get(dst, 0) + 1
            key = _message_key(message_id, topic, data)
            before = peer.seen.get(key)
            if before is None:
                peer.seen[key] = hops
                record = self.arrivals.get(message_id)
                if record is not None:
                    record[2].setdefault(dst, now)
                if hops > 1:
                    forward = encode_frame([PUBLISH, message_id, topic, hops - 1, data, origin])
                    targets = router.received(src, topic, message_id, forward, now)
                    out = [(t, forward) for t in targets]
                else:
                    router.received(src, topic, message_id, None, now)
            else:
                router.received(src, topic, message_id, None, now)
        elif kind == SUBSCRIBE:
            out = router.interest(src, [t for t, _ in message[1]], [], now)
        elif is_mesh_control(message):
            out = router.control(src, message, now)
        for to, data in out:
            self.net.send(dst, to, data)

    def _publish(self, now: float, count: int) -> None:
        live = [p for p in self.peers if p.alive]
        peer = self.rng.choice(live)
        message_id = os.urandom(16)
        data = self.rng.randbytes(self.size)
        frame = encode_frame([PUBLISH, message_id, TOPIC, self.hops, data, f"p{peer.index}"])
        peer.seen[_message_key(message_id, TOPIC, data)] = self.hops
        self.arrivals[message_id] = (now, peer.index, {})
        for to in peer.router.published(TOPIC, message_id, frame, now):
            self.net.send(peer.index, to, frame)
        if count > 1:
            self.net.at(now + self.interval, self._publish, count - 1)

    # -- the run ------------------------------------------------------------------------------

    def run(self, warmup: float = 5.0, drain: float = 5.0) -> PubSubResult:
        self.net.run_until(warmup)
        if self.churn:
            self.net.at(warmup, self._churn_step)
        frames0 = dict(self.net.bytes_sent)
        copies0 = dict(self.copies)
        self.net.at(warmup, self._publish, self.messages)
        cpu = time.process_time()
        end = warmup + self.messages * self.interval + drain
        self.net.run_until(end)
        cpu = time.process_time() - cpu
        return self._figures(frames0, copies0, cpu)

    def _figures(self, bytes0: dict[int, int], copies0: dict[int, int], cpu: float) -> PubSubResult:
        """Delivery counts each message at the peers present from a second before its
        publication to 3 s after (a peer that joined later had no mesh yet, one that left
        before could not receive it); the rest are per message and peer over the peers
        present at the end."""
        wanted = got = 0
        latencies: list[float] = []
        for sent, publisher, arrivals in self.arrivals.values():
            for p in self.peers:
                if p.index != publisher and p.born <= sent - 1.0 and p.died >= sent + 3.0:
                    wanted += 1
                    at = arrivals.get(p.index)
                    if at is not None:
                        got += 1
                        latencies.append(at - sent)
        latencies.sort()
        present = max(1, sum(1 for p in self.peers if p.alive))
        messages = max(1, len(self.arrivals))
        copies = sum(self.copies.values()) - sum(copies0.values())
        sent_bytes = sum(self.net.bytes_sent.values()) - sum(bytes0.values())
        degrees = [len(p.router.mesh.get(TOPIC, ())) for p in self.peers if p.alive]
        return PubSubResult(
            peers=self.n,
            overlay=self.overlay,
            loss=self.net._loss,
            frame_loss=self.net._frame_loss,
            churn=self.churn,
            messages=len(self.arrivals),
            delivery=got / wanted if wanted else 1.0,
            p50=_quantile(latencies, 0.5),
            p99=_quantile(latencies, 0.99),
            amplification=copies / (messages * present),
            bytes_per_peer=sent_bytes / (messages * present),
            cpu_per_message=cpu / messages,
            mesh_degree=statistics.fmean(degrees) if degrees else 0.0,
            iwant_served=sum(p.router.counters["iwant_served"] for p in self.peers),
            left=self.left,
            joined=self.joined,
        )


def _is_publish(frame: bytes) -> bool:
    return frame[4:6] == _PUBLISH_HEAD  # (after the frame's 4-byte length)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]
