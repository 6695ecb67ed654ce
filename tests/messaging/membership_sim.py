"""Membership engines wired together on a virtual clock: messages take a latency drawn by
the test, may be dropped by a rule (a partition, a lossy member), never reach a crashed
member, and wait for a paused one. Nothing here reads the wall clock. One heap holds
every engine's next timer and every message on its way, so a thousand members run in
one process: the cost of a step does not grow with the group."""

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
    Outgoing,
    Seed,
)
from dtp.messaging._membership_wire import SYNC_REPLY, VERSION, encode_message, pack_record

#: drop(sender_id, receiver_id, now) -> whether the message is lost
DropRule = Callable[[str, str, float], bool]

_TIMER = 0
_MESSAGE = 1


def member(i: int) -> Member:
    return Member(f"m{i}", "127.0.0.1", 10_000 + i, i.to_bytes(4, "big") * 8, 0, MemberState.ALIVE)


@dataclass(order=True)
class _Item:
    at: float
    order: int
    what: int = field(compare=False)
    to: str = field(compare=False)
    data: bytes = field(compare=False, default=b"")
    key: bytes = field(compare=False, default=b"")


@dataclass
class Traffic:
    """What one member sent: messages, and their bytes (frames, headers included)."""

    messages: int = 0
    bytes: int = 0


class Cluster:
    """``n`` engines, each joined through member 0 (``configs``: a config of its own for
    some members, by id)."""

    def __init__(
        self,
        n: int,
        config: MembershipConfig,
        *,
        seed: int = 0,
        latency: Callable[[random.Random], float] = lambda r: r.uniform(0.001, 0.01),
        start_spread: float = 0.0,
        configs: dict[str, MembershipConfig] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.latency = latency
        self.now = 0.0
        self.engines: dict[str, Membership] = {}
        self.by_port: dict[int, str] = {}
        self.crashed: set[str] = set()
        #: id -> (from, until): while paused, a member neither reads nor fires timers
        self.paused: dict[str, tuple[float, float]] = {}
        #: seconds a resumed member takes per message read from its backlog
        self.drain = 0.0
        #: id -> seconds each of its timers fires late (a starved process)
        self.late: dict[str, float] = {}
        self.drop: DropRule = lambda a, b, t: False
        self.events: dict[str, list[MembershipEvent]] = {}
        self.traffic: dict[str, Traffic] = {}
        #: tap(sender_id, message): sees every message sent (even one lost on the way)
        self.tap: Callable[[str, Outgoing], object] | None = None
        self._heap: list[_Item] = []
        self._timers: dict[str, float | None] = {}
        self._order = 0
        self._backlog: dict[str, int] = {}
        first = member(0)
        for i in range(n):
            me = member(i)
            seeds = [] if i == 0 else [Seed(first.host, first.port, first.key)]
            at = self.rng.uniform(0, start_spread)
            engine = Membership(
                me,
                at,
                config=(configs or {}).get(me.id, config),
                rng=random.Random(seed * 1000 + i),
                seeds=seeds,
            )
            self.engines[me.id] = engine
            self.by_port[me.port] = me.id
            self.events[me.id] = []
            self.traffic[me.id] = Traffic()
            self._pump(me.id)

    def _push(self, at: float, what: int, to: str, data: bytes = b"", key: bytes = b"") -> None:
        self._order += 1
        heapq.heappush(self._heap, _Item(at, self._order, what, to, data, key))

    def _pump(self, member_id: str) -> None:
        engine = self.engines[member_id]
        for out in engine.messages_to_send():
            to = self.by_port[out.port]
            traffic = self.traffic[member_id]
            traffic.messages += 1
            traffic.bytes += len(out.data)
            if self.tap is not None:
                self.tap(member_id, out)
            if member_id in self.crashed or to in self.crashed:
                continue
            if self.drop(member_id, to, self.now):
                continue
            at = self.now + self.latency(self.rng)
            self._push(at, _MESSAGE, to, out.data[4:], engine.me.key)
        while (event := engine.next_event()) is not None:
            self.events[member_id].append(event)
        timer = engine.get_timer()
        if timer is not None:
            timer += self.late.get(member_id, 0.0)
        if timer != self._timers.get(member_id):
            self._timers[member_id] = timer
            if timer is not None:
                self._push(timer, _TIMER, member_id)

    def run_until(self, end: float) -> None:
        """Deliver messages and fire timers in time order up to ``end``."""
        heap = self._heap
        while heap and heap[0].at <= end:
            item = heapq.heappop(heap)
            to = item.to
            if to in self.crashed:
                continue
            if item.what == _TIMER:
                if self._timers.get(to) != item.at:
                    continue  # superseded by a later get_timer()
                self._timers[to] = None  # (taken: whatever get_timer() says next is pushed)
            self.now = item.at
            pause = self.paused.get(to)
            if pause is not None and pause[0] <= item.at < pause[1]:
                # a paused member's timer fires as it resumes (late), then it reads its
                # backlog, each message after ``drain`` more seconds
                if item.what == _TIMER:
                    self._timers[to] = pause[1]
                    self._push(pause[1], _TIMER, to)
                else:
                    waiting = self._backlog.get(to, 0) + 1
                    self._backlog[to] = waiting
                    at = pause[1] + waiting * max(self.drain, 1e-6)  # (after the timer)
                    self._push(at, _MESSAGE, to, item.data, item.key)
                continue
            if item.what == _TIMER:
                self.engines[to].handle_timer(item.at)
            else:
                self.engines[to].receive(item.data, item.at, peer_key=item.key)
            self._pump(to)
        self.now = max(self.now, end)

    def converge(self) -> None:
        """Tell every member of every other at once (a SYNC-REPLY of the whole group), as
        if the group had run for long: the joins are old news, gossiped already (a
        thousand joins at once take minutes of gossip to spread, each message carrying
        a few)."""
        everyone = [pack_record(self.engines[i].me, None, VERSION) for i in self.engines]
        data = encode_message(VERSION, SYNC_REPLY, member(0), 0, None, everyone)
        for i, engine in self.engines.items():
            engine.receive(data[4:], self.now, peer_key=member(0).key)
            engine._gossip = type(engine._gossip)()
            while engine.next_event() is not None:
                pass
            self._pump(i)

    def crash(self, member_id: str) -> None:
        self.crashed.add(member_id)

    def pause(self, member_id: str, start: float, length: float) -> None:
        """SIGSTOP ``member_id`` at ``start`` for ``length`` seconds (then SIGCONT)."""
        self.paused[member_id] = (start, start + length)
        self._backlog[member_id] = 0

    def view(self, member_id: str) -> dict[str, MemberState]:
        return {m.id: m.state for m in self.engines[member_id].all_members()}

    def dead_at(self, observer: str, target: str) -> float | None:
        for event in self.events[observer]:
            if event.kind == "dead" and event.member.id == target:
                return event.at
        return None

    def live_ids(self, member_id: str) -> set[str]:
        return {m.id for m in self.engines[member_id].members()}
