"""A ledger carrier's timers and acknowledgements (:class:`CarrierTimers`): gaps given
up, the SYNC posted when due, and ``pipe::sync`` of what the peer reported."""

from __future__ import annotations

import struct

from dtp.errors import PipeError
from dtp.hostid.ledger_carrier.carrier_sending import CarrierSending
from dtp.hostid.ledger_carrier.framing import KIND_SYNC
from dtp.hostid.ledger_carrier.retention import CarrierRetention
from dtp.ledger.receipt import object_id_bytes


class CarrierTimers(CarrierSending, CarrierRetention):
    """The timers of :class:`~dtp.hostid.ledger_carrier.carrier.LedgerCarrier`, and the
    acknowledgements they send."""

    def get_timer(self) -> float | None:
        """When :meth:`poll` has something to do next (None: nothing pending)."""
        if self.closed:
            return None
        times = [
            lane.gap_since + self.gap_timeout
            for lanes in self._lanes.values()
            for lane in lanes
            if lane.gap_since is not None
        ]
        if self._first_unreported_at is not None:
            times.append(self._first_unreported_at + self.sync_interval)
        if self._retained_pending:
            oldest = next(iter(self._retained_pending.values()))
            times.append(oldest[3] + self.gap_timeout)
        return min(times) if times else None

    def poll(self, now: float | None = None) -> None:
        """Give up expired gaps, ``pipe::sync`` what the peer acknowledged and post a
        SYNC when one is due (no ledger reads). A ledger error leaves both due."""
        now = self.clock() if now is None else now
        for lanes in self._lanes.values():
            for lane in lanes:
                if lane.gap_since is not None and now >= lane.gap_since + self.gap_timeout:
                    self.gaps_given_up += lane.give_up_gap(now)
                    self._note_data(now)
        if self._retained_pending:
            self._settle_retained(now)
        if self.closed:
            return
        self._sync_pipe()
        due = self._unreported >= self.sync_every or (
            self._first_unreported_at is not None
            and now >= self._first_unreported_at + self.sync_interval
        )
        if due:
            self._report()

    def _note_data(self, now: float) -> None:
        self._unreported += 1
        if self._first_unreported_at is None:
            self._first_unreported_at = now

    def _report(self) -> None:
        for pid, lanes in self._lanes.items():
            prefixes = [lane.prefix for lane in lanes]
            # (a pipe with nothing seen has nothing to acknowledge: a SYNC, a transaction
            # of ours, went to each idle pipe the peer created)
            if self._last_reported.get(pid, [0] * len(prefixes)) == prefixes:
                continue
            payload = (
                bytes([KIND_SYNC])
                + object_id_bytes(pid)
                + bytes([len(prefixes)])
                + struct.pack(f"<{len(prefixes)}Q", *prefixes)
            )
            self._post(payload)
            self._last_reported[pid] = prefixes
            self.syncs_sent += 1
        # (only now: a SYNC the ledger did not take is due again at the next poll)
        self._unreported = 0
        self._first_unreported_at = None

    def _sync_pipe(self) -> None:
        """``pipe::sync`` the inners the peer reported more of. A call the ledger did
        not answer leaves its target, so a later poll tries again."""
        for inner, acked in enumerate(self._ack_target):
            if acked <= self._acked[inner]:
                continue
            try:
                self.ledger.pipe_sync(self.identity, self.pipe_id, inner, acked)
            except PipeError:
                # another carrier on this pipe (an adopted pipe) moved it: re-read it
                lane = self.ledger.get_pipe(self.pipe_id).inners[inner]
                with self._post_lock:  # (a send in another thread moves _sent too)
                    self._sent[inner] = max(self._sent[inner], lane.next_seq)
                self._acked[inner] = max(self._acked[inner], lane.acked)
                # (refused, not unanswered: not tried again at every poll)
                self._ack_target[inner] = self._acked[inner]
                continue
            self._acked[inner] = acked
            self.pipe_syncs += 1
