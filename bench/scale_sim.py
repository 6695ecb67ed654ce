"""The simulated network of bench/scale.py: overlays, and frames crossing links on a
virtual clock.

Many peers in one process: each peer is a sans-I/O engine (pub/sub's mesh router, the
membership engine, a graph sync session per link) and the frames between them are the
real wire frames, carried by the link model of the deterministic network
(:class:`dtp.testing.network.Link`, one :class:`~dtp.testing.network._links.Direction`
per link direction): a frame arrives after the link's delay, and on a stream link (a DTP
connection's service) a lost one is sent again after the retransmission timeout, the
frames behind it waiting, as TCP and DTP's reliable records make loss a delay. With
``frame_loss`` a lost frame is instead gone for good (the harder case: what gossip must
repair; only the frames ``droppable`` picks: pub/sub drops a PUBLISH for a peer whose
queue is full, never a control frame). Everything is drawn from one seed, and nothing
reads the wall clock, so a run replays exactly; only its CPU is measured for real.

What is not simulated: the Noise handshakes, record encryption and the connection's
own acknowledgements (their bytes are not counted), and the CPU of the network stack.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from dtp.testing.network import Link
from dtp.testing.network._links import Direction, Medium

__all__ = ["Network", "random_regular", "small_world"]


def random_regular(n: int, degree: int, rng: random.Random) -> list[set[int]]:
    """A random ``degree``-regular graph on ``n`` nodes (pairing model, restarted until
    it has no loop or double edge; below ``degree + 1`` nodes, the complete graph)."""
    if n <= degree:
        return [set(range(n)) - {i} for i in range(n)]
    if n * degree % 2:
        raise ValueError("n x degree must be even")
    for _ in range(1000):
        stubs = [i for i in range(n) for _ in range(degree)]
        rng.shuffle(stubs)
        adj: list[set[int]] = [set() for _ in range(n)]
        ok = True
        # pair greedily, swapping a bad partner with a later stub
        i = 0
        while i < len(stubs):
            a = stubs[i]
            for j in range(i + 1, len(stubs)):
                b = stubs[j]
                if b != a and b not in adj[a]:
                    stubs[i + 1], stubs[j] = stubs[j], stubs[i + 1]
                    adj[a].add(b)
                    adj[b].add(a)
                    break
            else:
                ok = False
                break
            i += 2
        if ok:
            return adj
    raise RuntimeError("no random regular graph found")


def small_world(n: int, degree: int, rng: random.Random, rewire: float = 0.1) -> list[set[int]]:
    """A Watts-Strogatz graph: a ring where each node links to its ``degree`` nearest,
    each link moved to a random node with probability ``rewire``."""
    if n <= degree:
        return [set(range(n)) - {i} for i in range(n)]
    adj: list[set[int]] = [set() for _ in range(n)]
    for i in range(n):
        for k in range(1, degree // 2 + 1):
            j = (i + k) % n
            adj[i].add(j)
            adj[j].add(i)
    for i in range(n):
        for k in range(1, degree // 2 + 1):
            j = (i + k) % n
            if rng.random() < rewire and j in adj[i]:
                drawn = rng.sample(range(n), min(n, 16))
                choices = [c for c in drawn if c != i and c not in adj[i]]
                if choices:
                    c = choices[0]
                    adj[i].discard(j)
                    adj[j].discard(i)
                    adj[i].add(c)
                    adj[c].add(i)
    return adj


class Network:
    """Events on a virtual clock, and links that carry frames between peers.

    ``deliver(src, dst, frame, now)`` is called for each frame that arrives; ``at(time,
    fn, *args)`` runs ``fn(now, *args)`` then. A link is made per pair with a delay drawn
    from ``latency`` and the ``loss`` given; its two directions draw from the seed."""

    def __init__(
        self,
        seed: int,
        deliver: Callable[[int, int, bytes, float], None],
        *,
        latency: tuple[float, float] = (0.02, 0.1),
        loss: float = 0.0,
        frame_loss: bool = False,
        droppable: Callable[[bytes], bool] = lambda frame: True,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self._deliver = deliver
        self._latency = latency
        self._loss = loss
        self._frame_loss = frame_loss
        self._droppable = droppable
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._links: dict[tuple[int, int], Direction] = {}
        #: Per peer: frames and bytes sent, frames received.
        self.frames_sent: dict[int, int] = {}
        self.bytes_sent: dict[int, int] = {}
        self.lost = 0

    # -- links ------------------------------------------------------------------------------

    def connect(self, a: int, b: int) -> None:
        """A link between ``a`` and ``b`` (a stream, or frames that may be lost)."""
        delay = self.rng.uniform(*self._latency)
        link = Link(delay=delay, loss=0.0 if self._frame_loss else self._loss)
        for x, y in ((a, b), (b, a)):
            self._links[(x, y)] = Direction(Medium(link), random.Random(self.rng.random()))

    def disconnect(self, a: int, b: int) -> None:
        """The link is gone: what is on its way is lost."""
        self._links.pop((a, b), None)
        self._links.pop((b, a), None)

    def linked(self, a: int, b: int) -> bool:
        return (a, b) in self._links

    def send(self, src: int, dst: int, frame: bytes) -> None:
        way = self._links.get((src, dst))
        if way is None:
            return
        self.frames_sent[src] = self.frames_sent.get(src, 0) + 1
        self.bytes_sent[src] = self.bytes_sent.get(src, 0) + len(frame)
        if (
            self._frame_loss
            and self._loss
            and self._droppable(frame)
            and way.rng.random() < self._loss
        ):
            self.lost += 1
            return
        for arrives in way.send(self.now, frame):
            self.at(arrives, self._arrive, src, dst, frame)

    def _arrive(self, now: float, src: int, dst: int, frame: bytes) -> None:
        if (src, dst) in self._links:  # a link closed meanwhile loses what was on it
            self._deliver(src, dst, frame, now)

    # -- the clock --------------------------------------------------------------------------

    def at(self, time: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (time, next(self._order), fn, args))

    def run_until(self, end: float) -> None:
        events = self._events
        while events and events[0][0] <= end:
            time, _, fn, args = heapq.heappop(events)
            self.now = time
            fn(time, *args)
        self.now = end
