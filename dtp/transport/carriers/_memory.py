"""The in-memory carrier: two sans-I/O connections wired together, for tests and
simulations. Time is virtual, so timeouts and retransmissions run instantly and the
outcome depends only on the seed.

Stream mode (a reliable carrier, like TCP) can hand bytes over whole, one byte at a
time, or split at random. Datagram mode (an unreliable carrier) moves whole records
and can lose, duplicate and reorder them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal, get_args

from dtp.protocol.connection import Connection

Split = Literal["whole", "bytes", "random"]


class VirtualLink:
    """Two connections carried on a virtual clock: :meth:`run` over the carrier's
    :meth:`pump` and :meth:`advance` (:class:`MemoryLink`, and the ledger carrier's
    :class:`~dtp.hostid.ledger_carrier._carrier.LedgerLink`)."""

    now: float

    def pump(self) -> bool:
        """Move everything pending, both ways, once. True if anything moved."""
        raise NotImplementedError

    def advance(self) -> bool:
        """Jump the clock to the next timer and fire it. False if there is none."""
        raise NotImplementedError

    def run(
        self,
        until: Callable[[], bool] | None = None,
        *,
        max_rounds: int = 100_000,
        max_time: float = 120.0,
        on_round: Callable[[], None] | None = None,
    ) -> bool:
        """Pump (advancing virtual time when idle) until ``until()`` holds, both sides
        are quiet, or a limit is hit. Returns whether ``until`` held (True when
        ``until`` is None and the link went quiet)."""
        start = self.now
        for _ in range(max_rounds):
            if on_round is not None:
                on_round()
            if until is not None and until():
                return True
            if self.pump():
                continue
            if until is None:
                return True
            if self.now - start > max_time or not self.advance():
                return until()
        return until() if until is not None else False


class MemoryLink(VirtualLink):
    """Carries bytes between ``a`` and ``b``; see the module docstring."""

    def __init__(
        self,
        a: Connection,
        b: Connection,
        *,
        now: float = 0.0,
        seed: int = 0,
        split: Split = "whole",
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        datagrams: bool | None = None,
    ) -> None:
        if split not in get_args(Split):
            # (any other word split at random, as "random" does, without a word said)
            raise ValueError(f"split is one of {get_args(Split)}, got {split!r}")
        for name, chance in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            # a chance, not a percentage: loss=15 dropped every record, and a run spent
            # its whole max_time before its until() said False; NaN never dropped one
            if not isinstance(chance, (int, float)) or not 0.0 <= chance <= 1.0:
                raise ValueError(f"{name} is a probability from 0 to 1, got {chance!r}")
        self.a, self.b = a, b
        self.now = now
        self.rng = random.Random(seed)
        self.split = split
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self.datagrams = (not a.config.reliable_carrier) if datagrams is None else datagrams
        if not self.datagrams and (loss or duplicate or reorder):
            raise ValueError("loss, duplication and reordering need datagram mode")
        self._in_flight: dict[int, list[bytes]] = {id(a): [], id(b): []}
        self.delivered_records = 0
        self.dropped_records = 0

    def _chunks(self, data: bytes) -> list[bytes]:
        if self.split == "whole" or len(data) <= 1:
            return [data]
        if self.split == "bytes":
            return [data[i : i + 1] for i in range(len(data))]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(len(data) - 1, 8)))
        edges = [0, *cuts, len(data)]
        return [data[edges[i] : edges[i + 1]] for i in range(len(edges) - 1)]

    def _send(self, src: Connection, dst: Connection) -> bool:
        if self.datagrams:
            records = src.datagrams_to_send(self.now)
            queue = self._in_flight[id(dst)]
            for record in records:
                if self.rng.random() < self.loss:
                    self.dropped_records += 1
                    continue
                queue.append(record)
                if self.rng.random() < self.duplicate:
                    queue.append(record)
            if queue and self.reorder and self.rng.random() < self.reorder:
                self.rng.shuffle(queue)
            moved = bool(queue)
            while queue:
                self.delivered_records += 1
                dst.receive_datagram(queue.pop(0), self.now)
            return moved or bool(records)
        data = src.data_to_send(self.now)
        for chunk in self._chunks(data):
            dst.receive_data(chunk, self.now)
        return bool(data)

    def pump(self) -> bool:
        moved_ab = self._send(self.a, self.b)
        moved_ba = self._send(self.b, self.a)
        return moved_ab or moved_ba

    def advance(self) -> bool:
        timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
        if not timers:
            return False
        self.now = max(self.now, min(timers))
        for conn in (self.a, self.b):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        return True
