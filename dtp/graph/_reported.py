"""The refusals a graph has described to each sync peer, so that a peer is not told
again, at every session, what it was told: docs/graph.md, "Sync protocol", "A refusal
is told once", says what is remembered (by the peer's replica id and the refused
version: soul, field, HAM state), where, and how many (:data:`MAX_REMEMBERED`, the
oldest forgotten first: a forgotten one costs a line of a REFUSED message once more).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dtp.graph._persist import GraphStorage, GraphStorageError
from dtp.graph.rules import Refusal

logger = logging.getLogger("dtp.graph.sync")

MAX_REMEMBERED = 1 << 16
"""Refusals remembered at most (about 100 bytes each), over every peer."""

_Key = tuple[bytes, bytes, bytes]  # (peer replica id, soul, field)


class ReportedRefusals:
    """What one graph has described to its sync peers: :meth:`select` (under the
    graph's lock, which also guards ``storage``)."""

    def __init__(self, storage: GraphStorage | None, limit: int = MAX_REMEMBERED) -> None:
        self._storage = storage
        self._limit = limit
        self._known: dict[_Key, float] | None = None  # read from the file at first use

    def _load(self) -> dict[_Key, float]:
        known = self._known
        if known is None:
            known = {}
            if self._storage is not None:
                try:
                    rows = self._storage.refusals_reported()
                except GraphStorageError as exc:
                    logger.warning("graph: %s; refusals are described to peers again", exc)
                    rows = []
                for peer, soul, field, state in rows:
                    known[peer, soul, field] = state
            self._known = known
        return known

    def select(
        self, peer: bytes, refusals: Sequence[Refusal], room: int
    ) -> tuple[list[Refusal], int]:
        """Of ``refusals`` of ``peer``'s updates: the ones to describe now -- not
        described to it before, at most ``room`` (the rest counted only, and described
        in a later session) -- remembered as described; and how many of ``refusals``
        it was told before."""
        known = self._load()
        fresh: list[Refusal] = []
        told = 0
        rows: list[tuple[bytes, bytes, bytes, float]] = []
        for refusal in refusals:
            update = refusal.update
            if update is None:
                continue  # (a refusal as a peer reported it: nothing of ours to describe)
            key = (peer, update.soul, update.field)
            if known.get(key) == update.state:
                told += 1
            elif len(fresh) < room:
                fresh.append(refusal)
                known.pop(key, None)  # (the newest goes last: the oldest are forgotten)
                known[key] = update.state
                rows.append((*key, update.state))
        forget: list[_Key] = []
        while len(known) > self._limit:
            oldest = next(iter(known))
            del known[oldest]
            forget.append(oldest)
        if self._storage is not None and (rows or forget):
            try:
                self._storage.remember_refusals(rows, forget)
            except GraphStorageError as exc:
                # remembered in memory all the same: lost, they are only described again
                logger.warning("graph: %s; refusals described are remembered in memory", exc)
        return fresh, told


__all__ = ["MAX_REMEMBERED", "ReportedRefusals"]
