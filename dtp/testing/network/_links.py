"""The link model of the simulated network: what one direction of a link does to what is
sent over it, as a pure function of the time, the bytes and a seeded random stream (no
clock read, no I/O), so that a run replays exactly from its seed.

A :class:`Link` states the conditions; a :class:`Direction` applies them to the chunks
one connection sends one way and says when each arrives (or that it never does):

- ``delay`` and ``jitter``: a chunk arrives ``delay`` plus a uniform draw in
  ``[0, jitter]`` seconds after it left;
- ``bandwidth`` (bytes per second, None for no limit): chunks leave one after another,
  each taking its size over the bandwidth -- shared by every connection on the link;
- ``loss``, ``duplicate``, ``reorder`` (probabilities per chunk). On a **stream** link
  (``datagrams=False``, TCP's service) nothing is lost, duplicated or reordered: a lost
  segment is sent again after a retransmission timeout (doubling each time, up to two
  minutes), and what
  follows waits behind it, as TCP makes loss a delay. On a **datagram** link the chunks
  are DTP records (whole: the link cuts the byte stream at record boundaries) and may be
  dropped, delivered twice, or held back so that later ones overtake them -- what a DTP
  connection with ``ConnectionConfig(reliable_carrier=False)`` recovers from.
- a partition: a stream link holds what is sent until it heals, a datagram link drops it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from dtp.errors import InvalidArgument
from dtp.native.reference._limits import RECORD_HEADER_LEN

__all__ = ["RECORD_HEADER_LEN", "SEGMENT", "Direction", "Link", "Medium", "records_in"]

#: The largest chunk a stream link moves at once (what one delivery carries).
SEGMENT: Final = 16384
#: TCP's least and greatest retransmission timeouts (Linux's 200 ms and 120 s).
MIN_RTO: Final = 0.2
MAX_RTO: Final = 120.0


@dataclass(frozen=True)
class Link:
    """Conditions on a link, each direction alike (see the module docs). The defaults
    are a perfect link: no delay, no limit, nothing lost."""

    delay: float = 0.0
    jitter: float = 0.0
    bandwidth: float | None = None
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    datagrams: bool = False

    def __post_init__(self) -> None:
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not _number(value) or not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"{name} is seconds, finite and >= 0, got {value!r}")
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not _number(value) or not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{name} is a probability from 0 to 1, got {value!r}")
        if self.loss == 1.0 and not self.datagrams:
            raise InvalidArgument("a stream link losing everything never delivers: use a partition")
        if not self.datagrams and (self.duplicate or self.reorder):
            raise InvalidArgument(
                "duplication and reordering need a datagram link (datagrams=True): a stream "
                "link delivers in order, once, as TCP does"
            )
        if self.bandwidth is not None and (
            not _number(self.bandwidth) or not math.isfinite(self.bandwidth) or self.bandwidth <= 0
        ):
            raise InvalidArgument(f"bandwidth is bytes per second > 0, got {self.bandwidth!r}")
        if not isinstance(self.datagrams, bool):
            raise InvalidArgument(f"datagrams is a bool, got {self.datagrams!r}")

    @property
    def rto(self) -> float:
        """The first retransmission timeout of a stream link: three times the most a
        chunk takes, and at least :data:`MIN_RTO`."""
        return max(MIN_RTO, 3 * (self.delay + self.jitter))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Medium:
    """What the connections on one direction of a link share: its conditions (changed
    for all of them at once), the time its wire is busy until (bandwidth), and whether
    it is cut (a partition)."""

    link: Link
    busy_until: float = 0.0
    cut: bool = False


@dataclass
class Direction:
    """One connection's way across a link: the shared medium (conditions, wire, cut), a
    random stream of its own (so one connection's draws do not shift another's), and
    what it keeps between chunks (the last arrival, for a stream's order; chunks held by
    a partition; a record cut across writes)."""

    medium: Medium
    rng: random.Random
    last_arrival: float = 0.0
    held: deque[bytes] = field(default_factory=deque)
    #: a FIN sent while the partition held data: it goes after the data, at the heal
    fin_held: bool = False
    partial: bytearray = field(default_factory=bytearray)
    #: counters: chunks sent, lost, duplicated, held back (reordered)
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0

    @property
    def link(self) -> Link:
        """The conditions now."""
        return self.medium.link

    def chunks(self, data: bytes) -> list[bytes]:
        """Cut ``data`` into what the link moves: segments of a stream, whole records on
        a datagram link (a record's tail waits for the next write; bytes that cannot be
        a record -- a header that says less than nothing -- pass as they are)."""
        if not self.link.datagrams:
            return [data[i : i + SEGMENT] for i in range(0, len(data), SEGMENT)]
        self.partial += data
        out = []
        while len(self.partial) >= RECORD_HEADER_LEN:
            size = RECORD_HEADER_LEN + int.from_bytes(self.partial[2:4], "little")
            if len(self.partial) < size:
                break
            out.append(bytes(self.partial[:size]))
            del self.partial[:size]
        return out

    def send(self, now: float, chunk: bytes) -> list[float]:
        """When ``chunk``, sent at ``now``, arrives: no time (lost, or held by a
        partition: see :attr:`held`), one, or two (duplicated)."""
        link = self.link
        self.sent += 1
        if self.medium.cut:
            if not link.datagrams:
                self.held.append(chunk)
            else:
                self.lost += 1
            return []
        start = max(now, self.medium.busy_until)
        leaves = start + (len(chunk) / link.bandwidth if link.bandwidth else 0.0)
        self.medium.busy_until = leaves
        arrives = leaves + link.delay + (self.rng.uniform(0, link.jitter) if link.jitter else 0.0)
        if not link.datagrams:
            rto = link.rto
            while link.loss and self.rng.random() < link.loss:
                arrives += rto  # sent again after the timeout, which doubles (to a limit)
                rto = min(2 * rto, MAX_RTO)
                self.lost += 1
            arrives = max(arrives, self.last_arrival)  # in order: it waits behind the rest
            self.last_arrival = arrives
            return [arrives]
        if link.loss and self.rng.random() < link.loss:
            self.lost += 1
            return []
        if link.reorder and self.rng.random() < link.reorder:
            # held back long enough for the next few to overtake it
            arrives += self.rng.uniform(0, 2 * (link.delay + link.jitter) + 0.01)
            self.reordered += 1
        times = [arrives]
        if link.duplicate and self.rng.random() < link.duplicate:
            times.append(arrives + self.rng.uniform(0, link.delay + link.jitter + 0.001))
            self.duplicated += 1
        return times

    def release(self) -> list[bytes]:
        """The chunks a partition held (a stream link's), to send again once healed."""
        held, self.held = list(self.held), deque()
        self.sent -= len(held)  # (counted again as they are sent)
        return held


def records_in(data: bytes) -> int:
    """How many whole records ``data`` holds (for statistics and tests)."""
    count, pos = 0, 0
    while len(data) - pos >= RECORD_HEADER_LEN:
        size = RECORD_HEADER_LEN + int.from_bytes(data[pos + 2 : pos + 4], "little")
        if len(data) - pos < size:
            break
        count += 1
        pos += size
    return count
