"""What a merge of a peer's batch reports (:class:`MergeReport`), and the states of a batch
brought to one form before it reaches the table (:func:`canonical_states`); the merge itself
is :meth:`Graph.merge <dtp.graph._store.Graph.merge>` (protocol.md 6.1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from dtp.graph.rules import Refusal
from dtp.native.core import zero_negative_states

_NEGATIVE_ZERO = b"\x00\x00\x00\x00\x00\x00\x00\x80"  # -0.0 as f64le


def canonical_states(batch: bytes) -> bytes:
    """``batch`` with every state ``-0.0`` written as ``0.0`` (the input itself when it
    holds none; RemoteProtocolError if it must be decoded and is malformed).

    HAM compares states as numbers, so ``-0.0`` and ``0.0`` are one state: a field held
    at ``-0.0`` by one peer and at ``0.0`` by another with the same value merges as SAME
    both ways, and the two tables keep different bits -- and different summaries, so every
    sync would send it again. Updates are therefore brought to ``0.0`` before they reach
    the table (and before their signature is checked, so a signature over ``-0.0``
    fails on every peer alike). A batch in which the 8 bytes of ``-0.0`` appear nowhere
    holds no such state and passes without being decoded; in any other the C core
    rewrites those states in place (a peer that put the 8 bytes in a value made the
    whole batch be decoded and encoded again in Python, about a second of CPU per 8 MiB
    of small updates).
    """
    if _NEGATIVE_ZERO not in batch:
        return batch
    fixed, changed = zero_negative_states(batch)
    return fixed if changed else batch


@dataclass(frozen=True)
class MergeReport:
    """What a merge of a peer's batch did, update by update."""

    applied: int = 0
    """Updates that changed the table."""
    historical: int = 0
    """Updates older than (or losing the tie against) what the table holds."""
    same: int = 0
    """Updates equal to what the table holds."""
    deferred: int = 0
    """Updates ahead of the machine clock, held until their time comes."""
    dropped: int = 0
    """Updates ahead of the clock that found the deferred queue full."""
    refused: int = 0
    """Updates refused by the ownership rule (unsigned, badly signed, bad soul), by a
    rule of Gun's user spaces (:mod:`dtp.graph.sea`), by the private tier's
    (:mod:`dtp.graph._private`) or by one of the graph's own rules (:mod:`dtp.graph.rules`)."""
    dropped_leaves: Mapping[int, float] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )
    """The summary leaves (:func:`~dtp.graph._summaries.soul_leaf`) of the dropped
    updates, each with the smallest state dropped in it: a sync session asks its peer for
    those leaves again once the clock reaches that state (at most 65,536 entries,
    whatever the batch)."""
    refusals: tuple[Refusal, ...] = dataclasses.field(default=(), repr=False, compare=False)
    """The refused updates, each with its reason: every one a rule refused, and up to
    1024 of those the ownership, SEA and private-tier checks refused (:attr:`refused` counts them
    all)."""
