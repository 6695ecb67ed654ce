"""A station's checks of tips (:class:`StationTips`): signed for its session, never
replayed, and covered by what the tipper contributed, read from the ledger at most every
``_TIP_READ_GAP`` seconds whatever the number of tips; and a tipper's tip IDs
(:class:`_TipIds`)."""

from __future__ import annotations

import heapq
import time
from typing import Any, Final

from dtp.identity.keys import sui_address_from_public_key
from dtp.messaging import errors as E
from dtp.messaging.broadcast.events import Tip
from dtp.messaging.broadcast.tip_state import StationTipState
from dtp.messaging.broadcast.wire import MAX_TIP_MESSAGE, _verify, signed_tip

#: Tip IDs a station remembers per tipper at most (beyond, the oldest are forgotten and
#: every ID at or below them refused).
TIP_WINDOW: Final = 1024
#: How far (microseconds) a tip ID's time may lag the tipper's newest before the station
#: refuses it unseen: room for a second device's clock, or a tip overtaken in flight.
TIP_SKEW_US: Final = 300_000_000
# Longest a tip waits for another tip of its tipper to be saved (seconds)
_TIP_SAVE_WAIT: Final = 30.0
# Least time (seconds) between the starts of two ledger reads that check tips: a tip the
# last read does not cover waits for the next one (which serves every tip waiting), so
# tips signed by fresh keys, free to make, cost one read per this, not one each
_TIP_READ_GAP: Final = 0.2
# How long (seconds) a read showing a tipper's contributions cover a tip is taken as it
# is: contributions only grow until a cancel or a leave (of an idle broadcast), after
# which a withdrawal or the leave is unseen so long
_TIP_READ_TRUST: Final = 1.0


class StationTips(StationTipState):
    """The tip checks of :class:`~dtp.messaging.broadcast.station.BroadcastStation`."""

    _tip_ids: dict[str, _TipIds]
    """Each tipper's tip IDs accepted (set by the station's constructor)."""

    def _check_tip(self, message: list[Any]) -> Tip:
        arrived = time.monotonic()
        _, tip_id, amount, text, public, signature = message
        if not (
            isinstance(tip_id, bytes)
            and len(tip_id) == 16
            and type(amount) is int
            and 0 < amount < 1 << 64
            and isinstance(text, str)
            and len(text.encode()) <= MAX_TIP_MESSAGE
            and isinstance(public, bytes)
            and isinstance(signature, bytes)
        ):
            raise E.InvalidTip("malformed tip")
        if not _verify(
            public, signature, signed_tip(self.broadcast_id, self.session, tip_id, amount, text)
        ):
            raise E.InvalidTip("tip signature does not verify")
        address = sui_address_from_public_key(public)
        number = int.from_bytes(tip_id, "big")
        with self._lock:
            need = self._tipped.get(address, 0) + amount
        contributed, fresh = self._contributed(address, need, arrived)
        if not self._take_tip(address, number, amount, contributed, fresh):
            # a read from before the tip arrived covered it, but another tip of the
            # tipper was counted meanwhile: a contribution since may pay for this one
            contributed, _ = self._contributed(address, None, arrived)
            self._take_tip(address, number, amount, contributed, True)
        if self._tip_state is not None:
            saved = False
            try:
                self._save_tip_state()
                saved = True
            finally:
                with self._lock:
                    if not saved:  # refused: not counted (the ID stays used)
                        self._tipped[address] -= amount
                    left = self._saving[address] - 1
                    if left:
                        self._saving[address] = left
                    else:
                        del self._saving[address]
                    self._tip_saved.notify_all()
        return Tip(address, amount, text, tip_id)

    def _contributed(self, address: str, need: int | None, arrived: float) -> tuple[int, bool]:
        """What ``address`` has contributed to the broadcast, and whether the ledger read
        that says so began after ``arrived`` (when its tip came in: the contribution that
        pays for a tip is made before the tip is sent). A read less than
        ``_TIP_READ_TRUST`` old of the broadcast not cancelled is taken as it is when it
        shows ``need`` or more (contributions only grow until a cancel or a leave); else
        the tip waits for a read begun after it arrived, which serves every tip waiting then,
        and reads begin at most every ``_TIP_READ_GAP`` seconds. (Each tip cost a read,
        a network call on Sui, before it was refused: tips signed by fresh keys, free to
        make, kept the ledger busy.)"""
        with self._reads:
            while True:
                now = time.monotonic()
                if self._read is not None:
                    began, cancelled, contributions = self._read
                    have = contributions.get(address, 0)
                    if began > arrived:
                        return have, True
                    if (
                        need is not None
                        and have >= need
                        and not cancelled
                        and now - began < _TIP_READ_TRUST
                    ):
                        return have, False
                if self._reading:
                    self._reads.wait()  # (notified when that read ends)
                    continue
                wait = self._read_began + _TIP_READ_GAP - now
                if wait <= 0:
                    break
                self._reads.wait(wait)
            self._reading = True
            began = self._read_began = time.monotonic()
        b = None
        try:
            b = self.ledger.get_broadcast(self.broadcast_id)
        finally:
            with self._reads:
                self._reading = False
                if b is not None:
                    self._read = (began, b.cancelled, b.contributions)
                self._reads.notify_all()
        return b.contributions.get(address, 0), True

    def _take_tip(
        self, address: str, number: int, amount: int, contributed: int, final: bool
    ) -> bool:
        """Count tip ``number`` of ``amount`` from ``address``, whose contributions are
        ``contributed``, or raise :class:`InvalidTip`; False (nothing counted) when they
        do not cover it and they may be out of date (not ``final``)."""
        with self._lock:
            while True:
                ids = self._tip_ids.get(address)
                if ids is not None and not ids.fresh(number):
                    raise E.InvalidTip("tip replayed (or older than the tipper's last ones)")
                total = self._tipped.get(address, 0) + amount
                if total <= contributed:
                    break
                if not final:
                    return False
                if not self._saving.get(address):
                    raise E.InvalidTip("tip not covered by the tipper's contributions")
                # counted with tips of this tipper still being saved: one whose save
                # fails is taken back, and then this one may be covered (a disk that
                # hangs: unchecked, not the listener's fault)
                if not self._tip_saved.wait(_TIP_SAVE_WAIT):
                    raise TimeoutError("the tip state file is still being written")
            if ids is None:  # (only now: a refused tip leaves nothing behind)
                ids = self._tip_ids[address] = _TipIds()
            # taken now (a concurrent replay of the ID, or a tip beyond the
            # contributions, is refused while the file is written)
            ids.take(number)
            self._tipped[address] = total
            if self._tip_state is not None:
                self._saving[address] = self._saving.get(address, 0) + 1
            return True


class _TipIds:
    """A tipper's tip IDs accepted by a station (128-bit numbers, the top 64 bits the
    tipper's microsecond clock): refused at or below ``floor``, which trails the
    newest ID's time by :data:`TIP_SKEW_US` and rises past any ID forgotten to keep
    at most :data:`TIP_WINDOW`. (A floor kept by count alone refused a second
    device's tip once the first sent 64 newer ones.)"""

    __slots__ = ("floor", "newest", "order", "recent")

    def __init__(self) -> None:
        self.floor = -1
        self.newest = -1
        self.recent: set[int] = set()
        self.order: list[int] = []  # (a heap of ``recent``: the oldest first)

    def fresh(self, number: int) -> bool:
        return number > self.floor and number not in self.recent

    def take(self, number: int) -> None:
        self.recent.add(number)
        heapq.heappush(self.order, number)
        if number > self.newest:
            self.newest = number
            lag = ((number >> 64) - TIP_SKEW_US) << 64
            self.floor = max(self.floor, lag - 1)
        while self.order and (self.order[0] <= self.floor or len(self.order) > TIP_WINDOW):
            oldest = heapq.heappop(self.order)
            self.recent.discard(oldest)
            self.floor = max(self.floor, oldest)
