"""Replicas converge: three to five graphs in a ring or a star of live sync sessions
(sans-I/O, bytes delivered in random splits), writer threads putting on random
replicas meanwhile, links cut at random (what was in flight is lost) and reconnected.
Once the writers are done and every link has drained, every replica holds the same
table (compared by export)."""

from __future__ import annotations

import random
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.graph import Graph, SyncSession

Link = tuple[SyncSession, SyncSession]


def _link(a: Graph, b: Graph) -> Link:
    left, right = SyncSession(a), SyncSession(b)
    left.start()
    right.start()
    return left, right


def _deliver(link: Link, rnd: random.Random) -> bool:
    moved = False
    for sender, receiver in (link, link[::-1]):
        data = sender.data_to_send()
        if data:
            cut = rnd.randrange(len(data) + 1)
            receiver.receive_data(data[:cut])
            receiver.receive_data(data[cut:])
            moved = True
    return moved


@settings(max_examples=12, derandomize=True, deadline=None)
@given(
    replicas=st.integers(3, 5),
    star=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_replicas_converge_through_partitions_and_concurrent_writers(
    replicas: int, star: bool, seed: int
) -> None:
    rnd = random.Random(seed)
    graphs = [Graph(ham=rnd.choice(["c", "python"])) for _ in range(replicas)]
    edges = (
        [(0, i) for i in range(1, replicas)]
        if star
        else [(i, (i + 1) % replicas) for i in range(replicas)]
    )
    links = [_link(graphs[i], graphs[j]) for i, j in edges]

    def writer(k: int) -> None:
        r = random.Random(seed + k)
        for _ in range(150):
            graph = graphs[r.randrange(replicas)]
            graph.put(f"node/{r.randrange(6)}", {f"f{r.randrange(4)}": r.randrange(1000)})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(40):
            for _ in range(10):
                _deliver(rnd.choice(links), rnd)
            if rnd.random() < 0.3:  # a partition: the link drops, in-flight bytes lost
                i = rnd.randrange(len(links))
                for session in links[i]:
                    session.close()
                links[i] = _link(links[i][0].graph, links[i][1].graph)
    finally:
        for thread in threads:
            thread.join()
    while any([_deliver(link, rnd) for link in links]):
        pass
    tables = [graph.snapshot() for graph in graphs]
    assert all(table == tables[0] for table in tables[1:])
    assert len({graph.root_summary() for graph in graphs}) == 1
    for link in links:
        for session in link:
            assert session.failed is None
            session.close()
    for graph in graphs:
        graph.close()
