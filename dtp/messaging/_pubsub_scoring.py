"""Validation verdicts and peer scores for pub/sub: the rules, the score's formula and
its decay are docs/messaging.md §4.1, §4.2 (gossipsub v1.1's ideas, kept to what a node
without a mesh overlay can use, plus the mesh-delivery deficit, gossipsub's P3, for a
node with one). Everything here takes ``now`` (seconds on any monotonic clock) rather
than reading a clock, so the rules are tested on virtual time
(tests/messaging/test_pubsub_scoring.py).
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

__all__ = ["PeerScore", "PeerScores", "ScoreParams", "Standing", "Verdict"]

logger = logging.getLogger("dtp.messaging.pubsub")


class Verdict(enum.Enum):
    """What a validation hook says of a message (gossipsub v1.1's three results)."""

    #: Deliver and forward it; the peer that brought it first gets credit.
    ACCEPT = "accept"
    #: Drop it (neither delivered nor forwarded), without penalty, for good: the verdict
    #: stays in the seen cache, so later copies are dropped unjudged (e.g. a duplicate
    #: at the application's level, or a message too old to pass on).
    IGNORE = "ignore"
    #: Drop it and count it against every peer that sends it: the message is invalid.
    REJECT = "reject"


class Standing(enum.Enum):
    """Where a peer's score puts it."""

    OK = "ok"
    #: Below ``graylist_threshold``: its PUBLISH frames are dropped unread.
    GRAYLISTED = "graylisted"
    #: Below ``disconnect_threshold``: its links are closed.
    DISCONNECT = "disconnect"


def check_number(name: str, value: object, *, signed: bool) -> None:
    """The rule of the pub/sub parameters that are numbers: an int or a float (not a
    bool; TypeError), finite and, unless ``signed``, 0 or more (ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__!r}")
    if not math.isfinite(value) or (value < 0 and not signed):
        raise ValueError(f"{name} must be finite" + ("" if signed else " and 0 or more"))


@dataclass(frozen=True, slots=True)
class ScoreParams:
    """Weights, caps, half-lives (seconds) and thresholds of peer scores.

    The defaults cut a flooding peer off after a few dozen invalid messages: with no
    credit, the 11th invalid message in a burst graylists it (-121 < -100) and the 21st
    closes its links (-441 < -400); with the full credit of +50, the 13th and the 22nd.
    A peer that stops sending recovers as ``invalid`` halves every minute: 21 invalid
    messages are off the graylist after about 65 s."""

    first_delivery_weight: float = 1.0
    first_delivery_cap: float = 50.0
    first_delivery_half_life: float = 600.0
    invalid_weight: float = -1.0
    invalid_half_life: float = 60.0
    graylist_threshold: float = -100.0
    disconnect_threshold: float = -400.0
    #: A counter that decays below this is 0 (and a record of a peer with no link and
    #: both counters 0 is forgotten).
    decay_to_zero: float = 0.01
    #: P3: a mesh peer below ``mesh_delivery_threshold`` deliveries (decaying with
    #: ``mesh_delivery_half_life``), ``mesh_delivery_activation`` seconds after it was
    #: grafted, costs ``mesh_delivery_weight`` times the deficit squared (threshold 0:
    #: off).
    mesh_delivery_weight: float = -1.0
    mesh_delivery_threshold: float = 0.0
    mesh_delivery_half_life: float = 60.0
    mesh_delivery_activation: float = 30.0
    #: Most records kept for peers with no link (a peer that reconnects finds its
    #: score); past this, the oldest are forgotten.
    retain: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "first_delivery_weight",
            "first_delivery_cap",
            "first_delivery_half_life",
            "invalid_weight",
            "invalid_half_life",
            "graylist_threshold",
            "disconnect_threshold",
            "decay_to_zero",
            "mesh_delivery_weight",
            "mesh_delivery_threshold",
            "mesh_delivery_half_life",
            "mesh_delivery_activation",
        ):
            check_number(name, getattr(self, name), signed=True)
        if self.first_delivery_weight < 0 or self.first_delivery_cap < 0:
            raise ValueError("first-delivery weight and cap are 0 or more (a credit)")
        if self.invalid_weight > 0 or self.mesh_delivery_weight > 0:
            raise ValueError("invalid_weight and mesh_delivery_weight are 0 or less (penalties)")
        if self.mesh_delivery_threshold < 0 or self.mesh_delivery_activation < 0:
            raise ValueError("mesh_delivery_threshold and _activation are 0 or more")
        if self.mesh_delivery_half_life <= 0:
            raise ValueError("half-lives are above 0 seconds")
        if self.first_delivery_half_life <= 0 or self.invalid_half_life <= 0:
            raise ValueError("half-lives are above 0 seconds")
        if not self.disconnect_threshold <= self.graylist_threshold < 0:
            raise ValueError("thresholds: disconnect_threshold <= graylist_threshold < 0")
        if not 0 <= self.decay_to_zero < 1:
            raise ValueError("decay_to_zero is in [0, 1)")
        if type(self.retain) is not int or self.retain < 0:
            raise ValueError("retain is an int, 0 or more")


@dataclass(frozen=True, slots=True)
class PeerScore:
    """One peer's score at a moment (:meth:`PeerScores.view`)."""

    peer: str
    score: float
    first_deliveries: float
    invalid: float
    standing: Standing
    #: Links to the peer open now.
    links: int
    #: Messages it brought while in one of the node's meshes (decaying: P3).
    mesh_deliveries: float = 0.0
    #: Meshes of the node it is in now.
    meshes: int = 0

    @property
    def graylisted(self) -> bool:
        return self.standing is not Standing.OK


class _Record:
    __slots__ = (
        "delivered",
        "first",
        "graylisted",
        "invalid",
        "label",
        "links",
        "mesh_active",
        "mesh_since",
        "meshes",
        "stamp",
    )

    def __init__(self, label: str, now: float) -> None:
        self.label = label
        self.first = 0.0
        self.invalid = 0.0
        self.stamp = now
        self.links = 0
        #: P3: meshes of the node the peer is in, since when, and what it delivered there
        #: (decaying); whether its deficit counts yet (set by _decay).
        self.meshes = 0
        self.mesh_since = now
        self.delivered = 0.0
        self.mesh_active = False
        #: Whether the last look found it graylisted (to log the transitions once).
        self.graylisted = False


_LN2: Final = math.log(2)


class PeerScores:
    """The scores of a node's peers, each known by a hashable key (the peer's Noise
    static key when the stream has one, else its link) and a label for views and logs.
    Thread-safe; every method takes ``now``."""

    def __init__(self, params: ScoreParams | None = None) -> None:
        self.params = ScoreParams() if params is None else params
        self._lock = threading.Lock()
        self._records: dict[Hashable, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    # -- the rules --------------------------------------------------------------------

    def _decay(self, rec: _Record, now: float) -> None:
        """(lock held) Bring ``rec``'s counters to ``now`` (a clock that goes back
        decays nothing: the stamp only moves forward), and whether its mesh-delivery
        deficit counts yet."""
        p = self.params
        rec.mesh_active = rec.meshes > 0 and now - rec.mesh_since >= p.mesh_delivery_activation
        elapsed = now - rec.stamp
        if elapsed <= 0:
            return
        rec.stamp = now
        if rec.first:
            rec.first *= math.exp(-_LN2 * elapsed / p.first_delivery_half_life)
            if rec.first < p.decay_to_zero:
                rec.first = 0.0
        if rec.invalid:
            rec.invalid *= math.exp(-_LN2 * elapsed / p.invalid_half_life)
            if rec.invalid < p.decay_to_zero:
                rec.invalid = 0.0
        if rec.delivered:
            rec.delivered *= math.exp(-_LN2 * elapsed / p.mesh_delivery_half_life)
            if rec.delivered < p.decay_to_zero:
                rec.delivered = 0.0

    def _score(self, rec: _Record) -> float:
        p = self.params
        score = (
            p.first_delivery_weight * min(rec.first, p.first_delivery_cap)
            + p.invalid_weight * rec.invalid * rec.invalid
        )
        if rec.mesh_active and rec.delivered < p.mesh_delivery_threshold:
            deficit = p.mesh_delivery_threshold - rec.delivered
            score += p.mesh_delivery_weight * deficit * deficit
        return score

    def _standing(self, rec: _Record) -> Standing:
        """(lock held) ``rec``'s standing, logging a move on or off the graylist."""
        p = self.params
        score = self._score(rec)
        if score < p.disconnect_threshold:
            standing = Standing.DISCONNECT
        elif score < p.graylist_threshold:
            standing = Standing.GRAYLISTED
        else:
            standing = Standing.OK
        gray = standing is not Standing.OK
        if gray and not rec.graylisted:
            logger.warning(
                "pubsub peer %s graylisted: score %.1f below %.1f (%.1f invalid "
                "messages); its messages are dropped unread",
                rec.label,
                score,
                p.graylist_threshold,
                rec.invalid,
            )
        elif rec.graylisted and not gray:
            logger.info("pubsub peer %s off the graylist: score %.1f", rec.label, score)
        rec.graylisted = gray
        return standing

    def _get(self, key: Hashable, label: str, now: float) -> _Record:
        rec = self._records.get(key)
        if rec is None:
            rec = self._records[key] = _Record(label, now)
        else:
            self._decay(rec, now)
        return rec

    # -- events -----------------------------------------------------------------------

    def connect(self, key: Hashable, label: str, now: float) -> Standing:
        """A link to the peer opened; its standing (a score kept from an earlier link
        still counts)."""
        with self._lock:
            rec = self._get(key, label, now)
            rec.links += 1
            return self._standing(rec)

    def disconnect(self, key: Hashable, now: float) -> None:
        """A link to the peer closed. The record stays while its counters are not 0, at
        most ``retain`` of them for peers with no link (the oldest go first)."""
        with self._lock:
            rec = self._records.get(key)
            if rec is None:
                return
            self._decay(rec, now)
            rec.links = max(0, rec.links - 1)
            self._prune(now)

    def _prune(self, now: float) -> None:
        """(lock held) Forget the records of peers with no link that have decayed to
        nothing, and the oldest past ``retain``."""
        idle = []
        for key, rec in list(self._records.items()):
            if rec.links:
                continue
            self._decay(rec, now)
            if rec.first == 0 and rec.invalid == 0 and rec.delivered == 0:
                del self._records[key]
            else:
                idle.append((rec.stamp, key))
        if len(idle) > self.params.retain:
            idle.sort(key=lambda item: item[0])
            for _, key in idle[: len(idle) - self.params.retain]:
                del self._records[key]

    def first_delivery(self, key: Hashable, label: str, now: float) -> None:
        """The peer brought a message first, and it was accepted. (Once per message
        delivered: kept to a counter. Credit only raises a score, so the standing and
        its log line are left to the next look.)"""
        with self._lock:
            rec = self._get(key, label, now)
            rec.first = min(rec.first + 1, self.params.first_delivery_cap)

    def graft(self, key: Hashable, now: float) -> None:
        """The peer joined one of the node's meshes (P3 counts from its first)."""
        with self._lock:
            rec = self._records.get(key)
            if rec is None:
                return
            self._decay(rec, now)
            if not rec.meshes:
                rec.mesh_since = now
            rec.meshes += 1

    def prune(self, key: Hashable, now: float) -> None:
        """The peer left one of the node's meshes."""
        with self._lock:
            rec = self._records.get(key)
            if rec is not None:
                self._decay(rec, now)
                rec.meshes = max(0, rec.meshes - 1)

    def mesh_delivery(self, key: Hashable, now: float) -> None:
        """A mesh peer brought a message (first, or within the delivery window)."""
        with self._lock:
            rec = self._records.get(key)
            if rec is not None:
                self._decay(rec, now)
                rec.delivered += 1

    def invalid(self, key: Hashable, label: str, now: float, count: int = 1) -> Standing:
        """The peer sent ``count`` invalid messages (rejected, malformed, or sent while
        graylisted)."""
        with self._lock:
            rec = self._get(key, label, now)
            rec.invalid += count
            return self._standing(rec)

    # -- views ------------------------------------------------------------------------

    def standing(self, key: Hashable, now: float) -> Standing:
        """The peer's standing now (OK for a peer never seen)."""
        with self._lock:
            rec = self._records.get(key)
            if rec is None or (rec.invalid == 0 and not rec.graylisted and not rec.meshes):
                return Standing.OK  # (no penalty: credit alone never lowers a score)
            self._decay(rec, now)
            return self._standing(rec)

    def score(self, key: Hashable, now: float) -> float:
        """The peer's score now (0 for a peer never seen)."""
        with self._lock:
            rec = self._records.get(key)
            if rec is None:
                return 0.0
            self._decay(rec, now)
            return self._score(rec)

    def view(self, now: float) -> dict[str, PeerScore]:
        """Every known peer's score at ``now``, by label."""
        with self._lock:
            self._prune(now)
            out = {}
            for rec in self._records.values():
                self._decay(rec, now)
                out[rec.label] = PeerScore(
                    rec.label,
                    self._score(rec),
                    rec.first,
                    rec.invalid,
                    self._standing(rec),
                    rec.links,
                    rec.delivered,
                    rec.meshes,
                )
            return out
