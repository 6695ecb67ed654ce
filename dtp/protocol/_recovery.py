"""Acknowledgement and loss recovery for carriers that may lose, duplicate or reorder
records (the ledger carrier, datagram carriers). Over TCP none of this runs.

The scheme follows QUIC's (RFC 9002) in small: every DATA record has a counter; the
receiver acknowledges counters in ranges; the sender declares a record lost when a
record sent 3 counters later was acknowledged, or when it is older than 9/8 of the
RTT behind the newest acknowledged one, or when the probe timeout fires; lost frames
are sent again in new records (new counters), never the old bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
INITIAL_RTT = 0.333
GRANULARITY = 0.001
MAX_ACK_DELAY = 0.025
ACK_EVERY = 2  # acknowledge at once after this many ack-eliciting records
MAX_ACK_RANGES = 64
#: Records tracked in flight at most. Far above what flow control lets stream data
#: fill (an 8 MiB window is 512 full records); datagrams and control frames are not
#: flow-controlled, so a peer that never acknowledges would otherwise grow the table
#: (and the per-timer scans of it) for as long as the application sends.
MAX_IN_FLIGHT = 16384
#: Probe timeouts in a row without an acknowledgement after which the next one takes the
#: peer for gone, once nothing was acknowledged for the idle timeout either
#: (IDLE_TIMEOUT): a peer that sends (its PINGs keep the idle timer alive) but
#: acknowledges nothing would otherwise be probed for, its data kept, for good. The
#: timeouts double: the 6th fires 63 PTOs in, about a minute at the initial PTO of 1 s.
MAX_PTO_COUNT = 5


class RangeSet:
    """Disjoint inclusive integer ranges, kept sorted ascending and merged."""

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def add(self, lo: int, hi: int) -> None:
        out: list[list[int]] = []
        placed = False
        for r in self.ranges:
            if r[1] + 1 < lo:
                out.append(r)
            elif hi + 1 < r[0]:
                if not placed:
                    out.append([lo, hi])
                    placed = True
                out.append(r)
            else:
                lo, hi = min(lo, r[0]), max(hi, r[1])
        if not placed:
            out.append([lo, hi])
        self.ranges = out

    def __contains__(self, value: int) -> bool:
        return any(lo <= value <= hi for lo, hi in self.ranges)

    def trim_below(self, count: int) -> None:
        """Keep at most ``count`` ranges, dropping the oldest (lowest)."""
        if len(self.ranges) > count:
            del self.ranges[: len(self.ranges) - count]

    def descending(self) -> tuple[tuple[int, int], ...]:
        return tuple((lo, hi) for lo, hi in reversed(self.ranges))

    def __bool__(self) -> bool:
        return bool(self.ranges)


class AckTracker:
    """Receiver side: which record counters arrived, and when an ACK is owed."""

    def __init__(self) -> None:
        self.received = RangeSet()
        self.unacked_eliciting = 0
        self.ack_deadline: float | None = None
        self.largest_time = 0.0
        self.largest = -1

    def on_record(self, counter: int, ack_eliciting: bool, now: float) -> None:
        self.received.add(counter, counter)
        self.received.trim_below(MAX_ACK_RANGES)
        if counter > self.largest:
            self.largest = counter
            self.largest_time = now
        if ack_eliciting:
            self.unacked_eliciting += 1
            if self.unacked_eliciting >= ACK_EVERY:
                self.ack_deadline = now
            elif self.ack_deadline is None:
                self.ack_deadline = now + MAX_ACK_DELAY

    def take_ack(self, now: float) -> tuple[tuple[tuple[int, int], ...], int]:
        """The ranges to acknowledge (largest first) and the ack delay in microseconds."""
        self.unacked_eliciting = 0
        self.ack_deadline = None
        # (to the nearest: the clock is float seconds, and truncated, 20 ms read 19999 us)
        delay_us = max(0, round((now - self.largest_time) * 1_000_000))
        return self.received.descending(), delay_us


@dataclass
class SentRecord:
    counter: int
    time_sent: float
    items: list[Any] = field(default_factory=list)  # what to resend if lost (the caller's)
    ack_eliciting: bool = True


class LossRecovery:
    """Sender side: RTT estimate, records in flight, loss detection, probe timeout."""

    def __init__(self) -> None:
        self.in_flight: OrderedDict[int, SentRecord] = OrderedDict()
        self.largest_acked = -1
        self.smoothed_rtt = INITIAL_RTT
        self.rttvar = INITIAL_RTT / 2
        self.min_rtt: float | None = None
        #: The newest RTT sample (RFC 9002's latest_rtt), before the ack delay is taken off
        self.latest_rtt = 0.0
        self.has_sample = False
        self.pto_count = 0
        self.last_eliciting_sent: float | None = None
        #: When an ACK last acknowledged something (the owner sets the start)
        self.last_ack_time = 0.0
        #: When the probing under way began (the first probe timeout since the last
        #: acknowledgement; the owner sets it)
        self.probing_since = 0.0

    def on_sent(self, record: SentRecord) -> SentRecord | None:
        """Track a sent record; returns the oldest one when the table was full (it
        is given up as lost: the caller sends its frames again)."""
        in_flight = self.in_flight
        in_flight[record.counter] = record
        if record.ack_eliciting:
            self.last_eliciting_sent = record.time_sent
        if len(in_flight) > MAX_IN_FLIGHT:
            return in_flight.popitem(last=False)[1]
        return None

    def _update_rtt(self, sample: float, ack_delay: float) -> None:
        self.latest_rtt = sample
        if self.min_rtt is None or sample < self.min_rtt:
            self.min_rtt = sample
        # At most the peer's max_ack_delay is taken off (RFC 9002 5.3): not negotiated
        # here, it is MAX_ACK_DELAY, the deadline both sides' AckTracker keeps to; more
        # would bring the estimate down to the minimum RTT however long the path took.
        ack_delay = min(ack_delay, MAX_ACK_DELAY)
        if sample - ack_delay >= self.min_rtt:
            sample -= ack_delay
        if not self.has_sample:
            self.smoothed_rtt = sample
            self.rttvar = sample / 2
            self.has_sample = True
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - sample)
            self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * sample

    def on_ack(
        self, ranges: tuple[tuple[int, int], ...], ack_delay_us: int, now: float
    ) -> tuple[list[SentRecord], list[SentRecord]]:
        """Process an ACK frame: returns (records newly acknowledged, records lost)."""
        acked: list[SentRecord] = []
        in_flight = self.in_flight
        if not in_flight:
            return [], []
        # Clipped to the counters in flight, the (disjoint) ranges cover at most the
        # span of those: a peer's 256 wide ranges per ACK frame would otherwise each
        # scan the whole table (40 ms of CPU per 16 KB record with 512 in flight).
        first = next(iter(in_flight))
        last = next(reversed(in_flight))
        for lo, hi in ranges:
            lo = max(lo, first)
            hi = min(hi, last)
            if lo > hi:
                continue
            if hi - lo < len(self.in_flight):
                for counter in range(lo, hi + 1):
                    rec = self.in_flight.pop(counter, None)
                    if rec is not None:
                        acked.append(rec)
            else:
                for counter in [c for c in self.in_flight if lo <= c <= hi]:
                    acked.append(self.in_flight.pop(counter))
        if not acked:
            return [], []
        newest = max(acked, key=lambda r: r.counter)
        if newest.counter > self.largest_acked:
            self.largest_acked = newest.counter
            if newest.ack_eliciting:
                self._update_rtt(max(now - newest.time_sent, GRANULARITY), ack_delay_us / 1e6)
        self.pto_count = 0
        self.last_ack_time = now
        return acked, self.detect_lost(now)

    def _loss_delay(self) -> float:
        # The latest sample counts too (RFC 9002 6.1.2): after the path's RTT grew, the
        # smoothed RTT alone took every record sent before the one just acknowledged
        # for lost, though they were no later than it.
        rtt = max(self.smoothed_rtt, self.latest_rtt)
        return max(TIME_THRESHOLD * rtt, GRANULARITY)

    def detect_lost(self, now: float) -> list[SentRecord]:
        lost: list[SentRecord] = []
        if self.largest_acked < 0:
            return lost
        delay = self._loss_delay()
        largest = self.largest_acked
        in_flight = self.in_flight
        # The table is in counter order, so the walk stops at the first record above the
        # largest acknowledged: it costs what it finds lost plus at most
        # PACKET_THRESHOLD records, never a copy of the table.
        for counter, rec in in_flight.items():
            if counter > largest:
                break
            # the same expression as loss_deadline(): a record must be lost exactly when
            # its deadline has come, or a due timer could fire forever without effect
            if counter <= largest - PACKET_THRESHOLD or rec.time_sent + delay <= now:
                lost.append(rec)
        for rec in lost:
            del in_flight[rec.counter]
        return lost

    def loss_deadline(self) -> float | None:
        """When the oldest record below the largest acknowledged becomes lost by time."""
        for counter, rec in self.in_flight.items():
            if counter < self.largest_acked:
                return rec.time_sent + self._loss_delay()
            break
        return None

    def pto_deadline(self) -> float | None:
        if not any(r.ack_eliciting for r in self.in_flight.values()):
            return None
        assert self.last_eliciting_sent is not None
        return self.last_eliciting_sent + self.pto_interval() * (1 << self.pto_count)

    def pto_interval(self) -> float:
        """The probe timeout before any backoff (RFC 9002's PTO)."""
        return self.smoothed_rtt + max(4 * self.rttvar, GRANULARITY) + MAX_ACK_DELAY

    def on_pto(self) -> list[SentRecord]:
        """The probe timer fired: the two oldest ack-eliciting records in flight are
        sent again as probes; their acknowledgement then settles the rest."""
        self.pto_count += 1
        return self.take_probes()

    def take_probes(self) -> list[SentRecord]:
        """The two oldest ack-eliciting records in flight, taken out to be sent again."""
        probes: list[int] = []
        for counter, rec in self.in_flight.items():  # (not a scan of the whole table)
            if rec.ack_eliciting:
                probes.append(counter)
                if len(probes) == 2:
                    break
        return [self.in_flight.pop(c) for c in probes]
