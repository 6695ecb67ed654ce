"""Membership at scale (bench/scale.py): ``n`` members, each the sans-I/O engine
:class:`dtp.messaging.discovery.Membership` driven as its drivers drive it (messages in
with ``receive``, the time with ``handle_timer`` when ``get_timer`` says, what
``messages_to_send`` returns carried to the member it names), on a virtual clock.

Every pair of members is a link of its own (the drivers open a DTP connection per
message): its delay drawn from the pair in 20..100 ms, and with ``loss`` a message is
sent again after the retransmission timeout (as on a DTP connection) rather than lost.
Members join through member 0, a few at a time; once every view holds every member the
run counts the messages of some probe periods, then crashes one member and times how
long until every other one holds it dead.

Only the engine's public face is used (``Membership``, ``MembershipConfig``, ``Member``,
``Seed``), so the run measures whatever rules the engine has.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

from dtp.messaging.discovery import Member, Membership, MembershipConfig, MemberState, Seed


@dataclass
class MembershipResult:
    members: int
    loss: float
    #: Seconds from the first join until every view held every member (nan: never).
    converged: float
    #: Messages (and bytes) each member sends per probe period, once converged.
    messages_per_period: float
    bytes_per_period: float
    #: Seconds from a crash until every other member holds it dead (nan: not by the end).
    death_seen: float
    #: Seconds until the first member held it suspect / dead.
    first_suspect: float
    first_dead: float
    #: The engine's documented bound for this size (``detection_bound``: the guarantee).
    bound: float
    #: Its typical-case bound (``spread_bound``, docs/messaging.md §6.2).
    spread: float
    cpu: float


def _member(i: int) -> Member:
    key = hashlib.blake2b(i.to_bytes(4, "big"), digest_size=32).digest()
    return Member(f"m{i}", "10.0.0.1", 10_000 + i, key, 0, MemberState.ALIVE)


class MembershipRun:
    def __init__(
        self,
        n: int,
        *,
        loss: float = 0.05,
        seed: int = 1,
        config: MembershipConfig | None = None,
        join_spread: float = 10.0,
    ) -> None:
        self.n = n
        self.loss = loss
        self.rng = random.Random(seed)
        self.config = config or MembershipConfig(max_members=max(1024, 2 * n))
        self.now = 0.0
        self._events: list[tuple[float, int, int, Any]] = []
        self._order = itertools.count()
        self.engines: list[Membership | None] = [None] * n
        self._timer: list[float] = [float("inf")] * n
        self.crashed: set[int] = set()
        self.sent = [0] * n
        self.sent_bytes = [0] * n
        self.members = [_member(i) for i in range(n)]
        seed0 = Seed(self.members[0].host, self.members[0].port, self.members[0].key)
        for i in range(n):
            at = 0.0 if i == 0 else self.rng.uniform(0, join_spread)
            self._push(at, i, ("join", seed0))

    def _push(self, at: float, who: int, what: Any) -> None:
        heapq.heappush(self._events, (at, next(self._order), who, what))

    def _delay(self, a: int, b: int) -> float:
        lo, hi = (a, b) if a < b else (b, a)
        h = hashlib.blake2b(f"{lo},{hi}".encode(), digest_size=4).digest()
        delay = 0.02 + 0.08 * int.from_bytes(h, "big") / 2**32
        rto = max(0.2, 3 * delay)
        while self.loss and self.rng.random() < self.loss:
            delay += rto
            rto *= 2
        return delay

    def _pump(self, i: int) -> None:
        engine = self.engines[i]
        assert engine is not None
        for out in engine.messages_to_send():
            to = out.port - 10_000
            self.sent[i] += 1
            self.sent_bytes[i] += len(out.data)
            if to not in self.crashed:
                self._push(self.now + self._delay(i, to), to, ("msg", out.data[4:], engine.me.key))
        due = engine.get_timer()
        if due is not None and due < self._timer[i]:
            self._timer[i] = due
            self._push(due, i, ("timer", due))

    def _step(self, at: float, i: int, what: Any) -> None:
        self.now = at
        if i in self.crashed:
            return
        kind = what[0]
        if kind == "join":
            self.engines[i] = Membership(
                self.members[i],
                at,
                config=self.config,
                rng=random.Random(self.rng.getrandbits(32)),
                seeds=[] if i == 0 else [what[1]],
            )
            self._pump(i)
            return
        engine = self.engines[i]
        if engine is None:
            return  # not joined yet: the message finds no server
        if kind == "msg":
            engine.receive(what[1], at, peer_key=what[2])
        elif kind == "timer":
            if what[1] != self._timer[i]:
                return  # superseded by an earlier one
            self._timer[i] = float("inf")
            engine.handle_timer(at)
        while engine.next_event() is not None:
            pass
        self._pump(i)

    def run_until(self, end: float, until: Any = None, check_every: float = 1.0) -> float | None:
        """Run to ``end``; with ``until()``, stop at the first whole second it is true
        and return that time."""
        next_check = self.now + check_every
        while self._events and self._events[0][0] <= end:
            at, _, i, what = heapq.heappop(self._events)
            if until is not None and at >= next_check:
                self.now = next_check
                if until():
                    heapq.heappush(self._events, (at, next(self._order), i, what))
                    return next_check
                next_check += check_every
            self._step(at, i, what)
        self.now = end
        return None

    def _converged(self) -> bool:
        n = self.n
        return all(e is not None and len(e.members()) == n for e in self.engines)

    def _dead_everywhere(self, victim: str) -> bool:
        for i, e in enumerate(self.engines):
            if i in self.crashed or e is None:
                continue
            m = e.member(victim)
            if m is not None and m.live:
                return False
        return True

    def _first(self, victim: str, state: MemberState) -> bool:
        for i, e in enumerate(self.engines):
            if i in self.crashed or e is None:
                continue
            m = e.member(victim)
            if m is not None and m.state >= state:
                return True
        return False

    def run(self, *, periods: int = 10, max_converge: float = 300.0) -> MembershipResult:
        cfg = self.config
        cpu = time.process_time()
        converged = self.run_until(max_converge, self._converged, 5.0)
        if converged is None:
            converged = float("nan")
        start = self.now
        sent0, bytes0 = sum(self.sent), sum(self.sent_bytes)
        self.run_until(start + periods * cfg.probe_interval)
        live = self.n
        per = (sum(self.sent) - sent0) / (live * periods)
        per_bytes = (sum(self.sent_bytes) - bytes0) / (live * periods)
        victim = self.n - 1
        self.crashed.add(victim)
        crash = self.now
        name = self.members[victim].id
        bound = cfg.detection_bound(self.n)
        suspect = self.run_until(crash + bound, lambda: self._first(name, MemberState.SUSPECT), 0.1)
        dead = self.run_until(crash + bound, lambda: self._first(name, MemberState.DEAD), 0.1)
        seen = self.run_until(crash + bound, lambda: self._dead_everywhere(name), 0.1)
        nan = float("nan")
        return MembershipResult(
            members=self.n,
            loss=self.loss,
            converged=converged,
            messages_per_period=per,
            bytes_per_period=per_bytes,
            death_seen=nan if seen is None else seen - crash,
            first_suspect=nan if suspect is None else suspect - crash,
            first_dead=nan if dead is None else dead - crash,
            bound=bound,
            spread=cfg.spread_bound(self.n),
            cpu=time.process_time() - cpu,
        )
