"""A ``hypothesis.stateful`` machine of replicated graphs (docs/graph.md) to extend:
replicas linked by live sync sessions, written to anywhere, under any schedule of
partitions, and the promise that holds whatever happened: once the links are back and
quiet, every replica holds the same table.

:class:`GraphMachine` keeps ``replicas`` in-memory graphs on one clock (virtual: it
moves only when the machine says), joined in a ring or a star by sans-I/O
:class:`~dtp.graph.SyncSession` pairs. Its rules put values (every Gun value type) on
any replica, deliver bytes on any link in pieces, cut a link (what was on its way is
lost, as when a connection drops) and join it again (a new session catches up from the
summaries), merge a peer's update whose state is ahead of the clock (deferred) or equal
to one already there (a tie), and let time pass. Its checks:

- each replica holds only what some replica wrote (no invented values);
- every replica's value for a field is at least as new as any write it has seen (HAM
  never goes back);
- after :meth:`GraphMachine.converge` -- every link joined and drained, the clock past
  every deferred state -- the replicas hold the same table, field for field, and the
  same summary; the machine converges at the end of every run, and whenever hypothesis
  picks the rule.

Extend it with rules that run your application's writes on ``self.replicas`` (noting
each with :meth:`GraphMachine.wrote`), or override :meth:`make_replicas` to open your
own graphs; the convergence promise then covers your writes too.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dtp.graph import Graph, SyncSession
from dtp.graph.values import encode_value
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from dtp.testing.strategies._graph import field_names, gun_values, souls

__all__ = ["T0", "GraphMachine"]

#: The machine's clock at the start (ms since the epoch: any fixed moment will do).
T0 = 1_700_000_000_000.0


class GraphMachine(RuleBasedStateMachine):
    """Graph replicas under any partition schedule (see the module docs). Class
    attributes set the shape: ``replicas`` (3), ``star`` (False: a ring)."""

    replicas_count = 3
    star = False

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.replicas = self.make_replicas(self.replicas_count)
        n = len(self.replicas)
        self.edges = (
            [(0, i) for i in range(1, n)] if self.star else [(i, (i + 1) % n) for i in range(n)]
        )
        self.links: list[tuple[SyncSession, SyncSession] | None] = [
            self._join(e) for e in self.edges
        ]
        #: (soul, field) -> every encoded value any replica wrote or merged
        self.written: dict[tuple[bytes, bytes], set[bytes]] = {}
        self.latest_deferred = -math.inf
        # each replica's state of each field when last looked at (HAM never goes back)
        self._seen: list[dict[tuple[bytes, bytes], float]] = [{} for _ in self.replicas]

    def make_replicas(self, count: int) -> list[Graph]:
        """The graphs (override to open your own: they must use :meth:`clock` as their
        clock for deferred updates to come due)."""
        return [Graph(None, now_ms=self.clock, max_drift_ms=1000.0) for _ in range(count)]

    def clock(self) -> float:
        """The replicas' clock (ms), moved by the machine's rules only."""
        return self.now

    def wrote(self, soul: str, fields: dict[str, Any]) -> None:
        """Note a write your rule made (for the no-invented-values check)."""
        for field, value in fields.items():
            key = (soul.encode(), field.encode())
            self.written.setdefault(key, set()).add(encode_value(value))

    # -- links ------------------------------------------------------------------------------------

    def _join(self, edge: tuple[int, int]) -> tuple[SyncSession, SyncSession]:
        a, b = SyncSession(self.replicas[edge[0]]), SyncSession(self.replicas[edge[1]])
        a.start()
        b.start()
        return a, b

    def _deliver(self, link: tuple[SyncSession, SyncSession], cut: float = 1.0) -> bool:
        moved = False
        for sender, receiver in (link, link[::-1]):
            data = sender.data_to_send()
            if data:
                at = max(1, int(len(data) * cut)) if cut < 1.0 else len(data)
                receiver.receive_data(data[:at])
                receiver.receive_data(data[at:])
                moved = True
        return moved

    def _cut(self, index: int) -> None:
        link = self.links[index]
        if link is not None:
            for session in link:
                assert session.failed is None, session.failed
                session.close()
            self.links[index] = None

    # -- rules ------------------------------------------------------------------------------------

    @rule(
        replica=st.integers(0, 7),
        soul=st.sampled_from(["a", "b", "c/1"]) | souls(),
        fields=st.dictionaries(
            st.sampled_from(["x", "y", "name"]) | field_names(),
            gun_values(),
            min_size=1,
            max_size=3,
        ),
    )
    def put(self, replica: int, soul: str, fields: dict[str, Any]) -> None:
        graph = self.replicas[replica % len(self.replicas)]
        graph.put(soul, fields)
        self.wrote(soul, fields)

    @rule(link=st.integers(0, 7), cut=st.floats(0.0, 1.0))
    def deliver(self, link: int, cut: float) -> None:
        found = self.links[link % len(self.links)]
        if found is not None:
            self._deliver(found, cut)

    @rule(link=st.integers(0, 7))
    def partition(self, link: int) -> None:
        """The link drops: both sessions end, what was on its way is lost."""
        self._cut(link % len(self.links))

    @rule(link=st.integers(0, 7))
    def heal(self, link: int) -> None:
        index = link % len(self.links)
        if self.links[index] is None:
            self.links[index] = self._join(self.edges[index])

    @rule(ms=st.sampled_from([1.0, 250.0, 1000.0, 5000.0]))
    def time_passes(self, ms: float) -> None:
        self.now += ms
        for replica in self.replicas:
            replica.advance()

    @rule(
        replica=st.integers(0, 7),
        soul=st.sampled_from(["a", "b"]),
        field=st.sampled_from(["x", "y"]),
        ahead=st.sampled_from([0.0, 500.0, 2000.0, 60_000.0]),
        value=gun_values(),
    )
    def merge_a_peers_update(
        self, replica: int, soul: str, field: str, ahead: float, value: Any
    ) -> None:
        """A peer's update at the clock, or ahead of it (beyond the drift: deferred
        until the clock reaches it), possibly at a state another value holds (a tie)."""
        state = self.now + ahead
        if isinstance(value, dict):
            value = None
        encoded = encode_value(value)
        graph = self.replicas[replica % len(self.replicas)]
        graph.merge(encode_ham_batch([HamUpdate(soul.encode(), field.encode(), state, encoded)]))
        self.written.setdefault((soul.encode(), field.encode()), set()).add(encoded)
        self.latest_deferred = max(self.latest_deferred, state)

    @rule()
    def converge(self) -> None:
        """Join every link, let time pass every deferred state, deliver until quiet:
        the replicas must then hold one table."""
        for index, link in enumerate(self.links):
            if link is None:
                self.links[index] = self._join(self.edges[index])
        if self.latest_deferred >= self.now:
            self.now = self.latest_deferred + 2000.0
        for replica in self.replicas:
            replica.advance()
        for _ in range(10_000):
            if not any([self._deliver(link) for link in self.links if link is not None]):
                break
        else:
            raise AssertionError("the links did not go quiet")
        tables = [replica.snapshot() for replica in self.replicas]
        for n, table in enumerate(tables[1:], 1):
            assert table == tables[0], f"replica {n} differs from replica 0 after converging"
        assert len({replica.root_summary() for replica in self.replicas}) == 1

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def nothing_invented_and_nothing_goes_back(self) -> None:
        for replica, seen in zip(self.replicas, self._seen, strict=True):
            for key, (state, value) in replica.snapshot().items():
                assert value in self.written.get(key, set()), (key, value)
                assert state >= seen.get(key, -math.inf), (key, state, seen[key])
                seen[key] = state

    @invariant()
    def sessions_healthy(self) -> None:
        for link in self.links:
            if link is not None:
                for session in link:
                    assert session.failed is None, session.failed

    def teardown(self) -> None:
        try:
            self.converge()
        finally:
            for index in range(len(self.links)):
                link = self.links[index]
                if link is not None:
                    for session in link:
                        session.close()
            for replica in self.replicas:
                replica.close()
