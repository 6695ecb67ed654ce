"""A test-only fault injector at the ledger edge: wraps a ledger so that the
``PipeDataSent`` events a ledger carrier reads are dropped, duplicated and reordered
(also across calls). Everything else passes through untouched.

Give each carrier its own wrapper (``LedgerCarrierOptions(ledger_filter=impair(...))``):
held-back events belong to the reader that was going to see them.

How the reordering draws which events wait is ``holding``: seeded tests' expectations
(which events are lost, how many rounds an exchange takes) depend on the draws, so each
way stays exactly as its tests were written against. With ``per_event`` an event's loss
and duplication are drawn from its own position on the ledger instead of from the
wrapper's one stream of draws: how the reads happen to batch the events then no longer
moves a run of unlucky draws onto other events, so the losses are as independent as the
rates say (a handshake's few events fell on such a run in about one run in forty).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, Literal

from dtp.ledger._objects import Event, EventFilter
from dtp.ledger.interface import Ledger

#: How the reordering picks the events that wait for a later read: ``"span"``, one draw
#: holds back a leading span (up to ``reorder`` of them) of the shuffled events;
#: ``"each"``, every event draws whether it waits (the ledger carrier pair tests, in
#: tests/hostid/ledger_carrier_pairs.py).
Holding = Literal["span", "each"]


class ImpairedLedger:
    """See the module docstring; ``seed`` makes the faults repeatable."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        seed: int,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        drop_first: int = 0,
        holding: Holding = "span",
        per_event: bool = False,
    ) -> None:
        self._ledger = ledger
        self.holding = holding
        self.seed, self.per_event = seed, per_event
        self.drop_first = drop_first
        self.rng = random.Random(seed)
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self._held: list[Event] = []
        self.dropped = 0
        self.duplicated = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def events(
        self, cursor: str | None = None, filter: EventFilter | None = None, limit: int = 1000
    ) -> tuple[list[Event], str | None]:
        events, cursor = self._ledger.events(cursor, filter, limit)
        out: list[Event] = []
        for event in events:
            if event.name != "PipeDataSent":
                out.append(event)
                continue
            draws = random.Random(f"{self.seed}/{event.cursor}") if self.per_event else self.rng
            if self.drop_first > 0 or draws.random() < self.loss:
                self.drop_first = max(0, self.drop_first - 1)
                self.dropped += 1
                continue
            self._held.append(event)
            if draws.random() < self.duplicate:
                self.duplicated += 1
                self._held.append(event)
        if self.reorder and self._held:
            self.rng.shuffle(self._held)
            # some events wait for a later call: reordering across reads, too
            if self.holding == "span":
                keep = int(len(self._held) * self.reorder * self.rng.random())
                release, self._held = self._held[keep:], self._held[:keep]
            else:
                held = [e for e in self._held if self.rng.random() < self.reorder]
                release = [e for e in self._held if e not in held or self.rng.random() < 0.5]
                self._held = [e for e in self._held if e not in release]
        else:
            release, self._held = self._held, []
        return out + release, cursor

    def wait_events(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        return self.events(cursor, filter, limit)


def impair(
    *,
    seed: int,
    loss: float = 0.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    drop_first: int = 0,
    per_event: bool = False,
) -> tuple[Callable[[Ledger], Ledger], list[ImpairedLedger]]:
    """A ``ledger_filter`` giving every carrier its own :class:`ImpairedLedger` (seeds
    ``seed``, ``seed + 1``, …; each drops its first ``drop_first`` data events; faults
    drawn ``per_event`` or not), and the list the wrappers are collected in."""
    made: list[ImpairedLedger] = []
    lock = threading.Lock()

    def wrap(ledger: Ledger) -> Ledger:
        with lock:
            wrapper = ImpairedLedger(
                ledger,
                seed=seed + len(made),
                loss=loss,
                duplicate=duplicate,
                reorder=reorder,
                drop_first=drop_first,
                per_event=per_event,
            )
            made.append(wrapper)
        return wrapper  # type: ignore[return-value]

    return wrap, made
