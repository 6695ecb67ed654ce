"""Collaborative values converge under random concurrent edits: three peers syncing live
over DTP on the deterministic network (dtp.testing.network), with partitions and a
datagram link that loses, duplicates and reorders, edit one text and one map; once the
network heals every peer holds the same text and map, and no edit is lost."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pycrdt")

import dtp.aio
from dtp.errors import DTPError
from dtp.graph import Graph, GraphSyncError, sync_stream
from dtp.testing.identities import identity
from dtp.testing.network import Link, SimNetwork, lossy

EPOCH_MS = 1_700_000_000_000
HUB = identity(1)
PEERS = ["hub", "p1", "p2"]


class Peer:
    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.key = identity(10 + index)
        loop = asyncio.get_running_loop()
        self.graph = Graph(now_ms=lambda: EPOCH_MS + loop.time() * 1000)
        self.text = self.graph.text("note/1", "body")
        self.map = self.graph.map("note/1", "tags")

    async def serve(self) -> asyncio.AbstractServer:
        async def session(reader, writer) -> None:  # type: ignore[no-untyped-def]
            try:
                await sync_stream(self.graph, reader, writer)
            except (DTPError, OSError):
                pass
            finally:
                writer.close()

        return await dtp.aio.start_server(
            session, self.name, 9000, identity=HUB, config=lossy(HUB, server=True)
        )

    async def keep_in_sync(self) -> None:
        while True:
            try:
                reader, writer = await dtp.aio.open_connection(
                    "hub", 9000, server_key=HUB.noise_public, config=lossy(self.key), timeout=10
                )
                try:
                    await sync_stream(self.graph, reader, writer)
                finally:
                    writer.close()
            except (DTPError, OSError, GraphSyncError):
                pass
            await asyncio.sleep(1.0)


def agreed(peers: list[Peer]) -> bool:
    first = (peers[0].text.value, peers[0].map.value)
    return all((p.text.value, p.map.value) == first for p in peers[1:])


edits = st.lists(
    st.tuples(
        st.floats(0, 40),  # when, in seconds
        st.integers(0, 2),  # which peer
        st.sampled_from(["insert", "insert", "insert", "delete", "tag"]),
        st.integers(0, 2**16),  # where (a token boundary, chosen from this)
    ),
    min_size=1,
    max_size=30,
)
partitions = st.lists(
    st.tuples(st.floats(0, 40), st.floats(1, 30), st.sets(st.integers(0, 2), min_size=1)),
    max_size=3,
)


@settings(deadline=None, max_examples=12)
@given(
    edits=edits,
    partitions=partitions,
    loss=st.floats(0, 0.15),
    duplicate=st.floats(0, 0.1),
    reorder=st.floats(0, 0.2),
    seed=st.integers(0, 2**32),
)
def test_concurrent_edits_converge_and_none_is_lost(
    edits: list[tuple[float, int, str, int]],
    partitions: list[tuple[float, float, set[int]]],
    loss: float,
    duplicate: float,
    reorder: float,
    seed: int,
) -> None:
    link = Link(
        delay=0.02, jitter=0.02, loss=loss, duplicate=duplicate, reorder=reorder, datagrams=True
    )
    net = SimNetwork(seed=seed, default_link=link)
    net.add_hosts(*PEERS)
    inserted: set[str] = set()
    deleted: set[str] = set()
    tags: dict[str, int] = {}

    async def main() -> tuple[bool, list[Peer]]:
        peers = [Peer(name, i) for i, name in enumerate(PEERS)]
        server = await peers[0].serve()
        syncing = [net.host(p.name).spawn(p.keep_in_sync()) for p in peers[1:]]
        for start, length, cut in partitions:
            net.at(start, lambda cut=[PEERS[i] for i in cut]: net.partition(cut))
            net.at(start + length, net.heal)
        loop = asyncio.get_running_loop()
        for n, (when, who, kind, where) in enumerate(sorted(edits, key=lambda e: e[0])):
            await asyncio.sleep(max(0.0, when - loop.time()))
            peer = peers[who]
            text = peer.text.value
            if kind == "insert":
                token = f"<{who}.{n}>"
                bounds = [0] + [i + 1 for i, ch in enumerate(text) if ch == ">"]
                peer.text.insert(bounds[where % len(bounds)], token)
                inserted.add(token)
            elif kind == "delete":
                mine = sorted(t for t in inserted - deleted if t in text)
                if mine:
                    token = mine[where % len(mine)]
                    peer.text.delete(text.index(token), len(token))
                    deleted.add(token)
            else:
                key = f"k{where % 5}.{who}"  # each peer its own keys: none overwritten
                peer.map.set(key, n)
                tags[key] = n
        await asyncio.sleep(max(0.0, 71 - loop.time()))  # every partition has healed
        for _ in range(120):
            if agreed(peers):
                break
            await asyncio.sleep(1)
        done = agreed(peers)
        for task in syncing:
            task.cancel()
        server.close()
        return done, peers

    converged, peers = net.run(main())
    try:
        assert converged
        text = peers[0].text.value
        for token in inserted - deleted:
            assert text.count(token) == 1  # no edit lost
        for token in deleted:
            assert token not in text
        assert peers[0].map.value == tags
        assert all(p.text.waiting == 0 for p in peers)
    finally:
        for peer in peers:
            peer.graph.close()
