"""Graph sync at scale (bench/scale.py): ``n`` peers, each a :class:`dtp.graph.Graph`
with one sans-I/O :class:`~dtp.graph.sync.SyncSession` per overlay link, whose bytes
cross the simulated links of bench/scale_sim.py (a DTP connection's service: a lost
frame is sent again after the retransmission timeout).

A change written at one peer goes to its neighbours as DATA, and every peer that merges
it passes it on to its other neighbours (never back to the one it came from, and not
again once merged): the run times it reaching every peer and counts the bytes each peer
sends per change. A second run has one peer come back to eight neighbours after missing
10,000 changes, and measures the CPU of its catch-up.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from bench.scale_sim import Network, random_regular
from dtp.graph import Graph
from dtp.graph.sync import SyncSession


@dataclass
class GraphResult:
    peers: int
    loss: float
    changes: int
    #: Share of (change, peer) pairs that arrived by the end.
    reached: float
    #: Seconds from a write until every peer has it (p50, max over changes).
    all_p50: float
    all_max: float
    #: Bytes a peer sends per change (all its sessions), averaged over the peers.
    bytes_per_peer: float
    cpu_per_change: float


@dataclass
class RejoinResult:
    missed: int
    neighbours: int
    #: CPU of the rejoining peer (its sessions' work, merges included).
    cpu: float
    #: Virtual seconds until every neighbour's session had ended its comparison.
    seconds: float
    bytes_received: int
    caught_up: bool


class _Mesh:
    """Graphs on an overlay, a session per link end, carried by a :class:`Network`."""

    def __init__(self, graphs: list[Graph], seed: int, loss: float) -> None:
        self.graphs = graphs
        self.net = Network(seed, self._deliver, loss=loss)
        self.sessions: dict[tuple[int, int], SyncSession] = {}
        self._dirty: set[tuple[int, int]] = set()
        self.cpu: dict[int, float] = {}
        self.received: dict[int, int] = {}
        self.after_delivery = lambda dst, now: None
        #: When the last bytes arrived (virtual seconds).
        self.last = 0.0

    def link(self, a: int, b: int) -> None:
        self.net.connect(a, b)
        for x, y in ((a, b), (b, a)):
            session = SyncSession(self.graphs[x])
            self.sessions[(x, y)] = session
            session.on_output = lambda key=(x, y): self._dirty.add(key)
        for x, y in ((a, b), (b, a)):
            self._timed(x, self.sessions[(x, y)].start)
        self.flush()

    def _timed(self, peer: int, fn: object) -> None:
        start = time.process_time()
        fn()  # type: ignore[operator]
        self.cpu[peer] = self.cpu.get(peer, 0.0) + time.process_time() - start

    def flush(self) -> None:
        while self._dirty:
            key = self._dirty.pop()
            session = self.sessions.get(key)
            if session is None:
                continue
            start = time.process_time()
            data = session.data_to_send()
            self.cpu[key[0]] = self.cpu.get(key[0], 0.0) + time.process_time() - start
            if data:
                self.net.send(key[0], key[1], data)
                self._dirty.add(key)  # pushes are made as the peer reads: ask again

    def _deliver(self, src: int, dst: int, data: bytes, now: float) -> None:
        session = self.sessions.get((dst, src))
        if session is None:
            return
        self.received[dst] = self.received.get(dst, 0) + len(data)
        self.last = now
        self._timed(dst, lambda: session.receive_data(data))
        self._dirty.add((dst, src))
        self.flush()
        self.after_delivery(dst, now)


class GraphRun:
    def __init__(
        self,
        n: int,
        *,
        degree: int = 8,
        loss: float = 0.05,
        changes: int = 20,
        interval: float = 0.2,
        seed: int = 1,
    ) -> None:
        self.n = n
        self.loss = loss
        self.changes = changes
        self.interval = interval
        self.rng = random.Random(seed)
        self.mesh = _Mesh([Graph() for _ in range(n)], seed, loss)
        for i, neighbours in enumerate(random_regular(n, degree, self.rng)):
            for j in neighbours:
                if i < j:
                    self.mesh.link(i, j)
        #: soul -> (written at, peers yet to have it, time the last one got it)
        self.pending: dict[str, tuple[float, set[int]]] = {}
        self.done: dict[str, float] = {}
        self.mesh.after_delivery = self._check

    def _check(self, dst: int, now: float) -> None:
        graph = self.mesh.graphs[dst]
        for soul, (at, missing) in list(self.pending.items()):
            if dst in missing and graph.state_of(soul, "v") is not None:
                missing.discard(dst)
                if not missing:
                    del self.pending[soul]
                    self.done[soul] = now - at

    def _write(self, now: float, left: int) -> None:
        peer = self.rng.randrange(self.n)
        soul = f"reading-{left}"
        self.pending[soul] = (now, set(range(self.n)) - {peer})
        self.mesh._timed(peer, lambda: self.mesh.graphs[peer].put(soul, {"v": left, "at": now}))
        self.mesh.flush()
        if left > 1:
            self.mesh.net.at(now + self.interval, self._write, left - 1)

    def run(self, warmup: float = 2.0, drain: float = 10.0) -> GraphResult:
        net = self.mesh.net
        net.run_until(warmup)
        bytes0 = sum(net.bytes_sent.values())
        cpu0 = sum(self.mesh.cpu.values())
        net.at(warmup, self._write, self.changes)
        net.run_until(warmup + self.changes * self.interval + drain)
        sent = sum(net.bytes_sent.values()) - bytes0
        cpu = sum(self.mesh.cpu.values()) - cpu0
        times = sorted(self.done.values())
        arrived = self.changes * (self.n - 1) - sum(len(m) for _, m in self.pending.values())
        return GraphResult(
            peers=self.n,
            loss=self.loss,
            changes=self.changes,
            reached=arrived / (self.changes * (self.n - 1)) if self.n > 1 else 1.0,
            all_p50=times[len(times) // 2] if times else float("nan"),
            all_max=times[-1] if times else float("nan"),
            bytes_per_peer=sent / (self.changes * self.n),
            cpu_per_change=cpu / self.changes,
        )


def rejoin(
    missed: int = 10_000, *, base: int = 10_000, neighbours: int = 8, seed: int = 1
) -> RejoinResult:
    """A peer that held ``base`` fields comes back to ``neighbours`` peers holding
    ``missed`` more changes (half new fields, half new values of old ones), one session
    with each at once: the CPU of its side of the catch-up."""
    rng = random.Random(seed)
    writer = Graph()
    for k in range(base // 10):
        writer.put(f"node-{k}", {f"f{j}": rng.random() for j in range(10)})
    back = Graph()
    _copy(writer, back)
    for k in range(missed // 2 // 10):
        writer.put(f"node-{k}", {f"f{j}": rng.random() for j in range(10)})
        writer.put(f"new-{k}", {f"f{j}": rng.random() for j in range(10)})
    peers = [Graph() for _ in range(neighbours)]
    for g in peers:
        _copy(writer, g)
    graphs = [back, *peers]
    mesh = _Mesh(graphs, seed, 0.0)
    for j in range(1, len(graphs)):
        mesh.link(0, j)
    mesh.net.run_until(600.0)
    sessions = [mesh.sessions[(0, j)] for j in range(1, len(graphs))]
    caught_up = back.root_summary() == writer.root_summary() and all(s.synced for s in sessions)
    return RejoinResult(
        missed=missed,
        neighbours=neighbours,
        cpu=mesh.cpu.get(0, 0.0),
        seconds=mesh.last,
        bytes_received=mesh.received.get(0, 0),
        caught_up=caught_up,
    )


def _copy(source: Graph, target: Graph) -> None:
    """Sync ``target`` with ``source`` by a session pair with no network between."""
    a, b = SyncSession(source, live=False), SyncSession(target, live=False)
    a.start()
    b.start()
    while not (a.synced and b.synced):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            break
        if x:
            b.receive_data(x)
        if y:
            a.receive_data(y)
    a.close()
    b.close()
