"""Membership engines wired together on a virtual clock: messages take a latency drawn by
the test, may be dropped by a rule (a partition, a lossy member) and never reach a
crashed member. Nothing here reads the wall clock."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dtp.messaging._membership import (
    Member,
    Membership,
    MembershipConfig,
    MembershipEvent,
    MemberState,
    Seed,
)

#: drop(sender_id, receiver_id, now) -> whether the message is lost
DropRule = Callable[[str, str, float], bool]


def member(i: int) -> Member:
    return Member(f"m{i}", "127.0.0.1", 10_000 + i, bytes([i]) * 32, 0, MemberState.ALIVE)


@dataclass(order=True)
class _Arrival:
    at: float
    order: int
    to: str = field(compare=False)
    data: bytes = field(compare=False)
    key: bytes = field(compare=False)


class Cluster:
    """``n`` engines, each joined through member 0."""

    def __init__(
        self,
        n: int,
        config: MembershipConfig,
        *,
        seed: int = 0,
        latency: Callable[[random.Random], float] = lambda r: r.uniform(0.001, 0.01),
        start_spread: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.latency = latency
        self.now = 0.0
        self.engines: dict[str, Membership] = {}
        self.by_port: dict[int, str] = {}
        self.crashed: set[str] = set()
        self.drop: DropRule = lambda a, b, t: False
        self.events: dict[str, list[MembershipEvent]] = {}
        self._queue: list[_Arrival] = []
        self._order = 0
        first = member(0)
        for i in range(n):
            me = member(i)
            seeds = [] if i == 0 else [Seed(first.host, first.port, first.key)]
            at = self.rng.uniform(0, start_spread)
            engine = Membership(
                me, at, config=config, rng=random.Random(seed * 1000 + i), seeds=seeds
            )
            self.engines[me.id] = engine
            self.by_port[me.port] = me.id
            self.events[me.id] = []
            self._pump(me.id)

    def _pump(self, member_id: str) -> None:
        engine = self.engines[member_id]
        for out in engine.messages_to_send():
            to = self.by_port[out.port]
            if member_id in self.crashed or to in self.crashed:
                continue
            if self.drop(member_id, to, self.now):
                continue
            self._order += 1
            at = self.now + self.latency(self.rng)
            heapq.heappush(self._queue, _Arrival(at, self._order, to, out.data[4:], engine.me.key))
        while (event := engine.next_event()) is not None:
            self.events[member_id].append(event)

    def run_until(self, end: float) -> None:
        """Deliver messages and fire timers in time order up to ``end``."""
        while True:
            timers = [
                (t, i)
                for i, e in self.engines.items()
                if i not in self.crashed and (t := e.get_timer()) is not None
            ]
            next_timer = min(timers) if timers else (float("inf"), "")
            next_msg = self._queue[0].at if self._queue else float("inf")
            at = min(next_timer[0], next_msg)
            if at > end:
                self.now = end
                return
            self.now = at
            if next_msg <= next_timer[0]:
                arrival = heapq.heappop(self._queue)
                if arrival.to in self.crashed:
                    continue
                self.engines[arrival.to].receive(arrival.data, at, peer_key=arrival.key)
                self._pump(arrival.to)
            else:
                self.engines[next_timer[1]].handle_timer(at)
                self._pump(next_timer[1])

    def crash(self, member_id: str) -> None:
        self.crashed.add(member_id)

    def view(self, member_id: str) -> dict[str, MemberState]:
        return {m.id: m.state for m in self.engines[member_id].all_members()}

    def dead_at(self, observer: str, target: str) -> float | None:
        for event in self.events[observer]:
            if event.kind == "dead" and event.member.id == target:
                return event.at
        return None

    def live_ids(self, member_id: str) -> set[str]:
        return {m.id for m in self.engines[member_id].members()}
