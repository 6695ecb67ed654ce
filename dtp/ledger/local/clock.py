"""The local ledger's clock and epoch (:class:`LedgerClock`), kept in the file's meta
values and shared by every handle on it (see :mod:`dtp.ledger.local` for wall and frozen
modes)."""

from __future__ import annotations

import time
from typing import Final

from dtp.errors import InvalidArgument
from dtp.ledger.local import rules
from dtp.ledger.local.call_arguments import u64
from dtp.ledger.local.stored import SEQ_MAX
from dtp.ledger.local.transactions import SqliteTransactions

#: The latest time the clock can show: every event stores its time in a signed 64-bit
#: INTEGER column, so a clock past it (a u64 still, as Sui's is) would make every
#: transaction that emits an event fail in SQLite instead of running.
CLOCK_MAX_MS: Final = SEQ_MAX


def _wall_ms() -> int:
    """The wall clock in ms since the epoch: the one place the ledger reads it (a test
    steps it back here, as no test can step the machine's clock)."""
    return time.time_ns() // 1_000_000


def _clock(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= CLOCK_MAX_MS:
        raise InvalidArgument(
            f"{what} must be an integer from 0 to 2**63-1 ms (the ledger's latest time), "
            f"got {value!r}."
        )
    return value


class LedgerClock(SqliteTransactions):
    """The clock and epoch of :class:`~dtp.ledger.local.store.LocalStore`."""

    def _now(self, meta: dict[str, str] | None = None) -> int:
        """The clock, from ``meta`` (:meth:`_metas`) or read now (lock held).

        In wall mode it never reads below the floor (the time the last transaction
        saved) nor below the last time this handle served under the same offset: a read
        does not write, so without the latter a wall clock stepping back between two
        reads made the second earlier than the first. Another process's reads are not
        seen here; its transactions are, through the floor."""
        if meta is None:
            meta = self._metas()
        if meta["clock_frozen"] == "1":
            return rules.stored_int(meta["clock_ms"])
        offset = meta["clock_offset"]
        now = max(_wall_ms() + rules.stored_int(offset), rules.stored_int(meta["clock_floor"]))
        served_offset, served = self._clock_served
        # a new offset is a clock set on purpose (unfreeze_clock, advance_clock), which
        # saved its own floor: what was served before it no longer holds the clock
        if served_offset == offset:
            now = max(now, served)
        # a clock set or advanced close to the end runs into it in wall mode: it stops
        # there rather than pass what the event log can store
        now = min(now, CLOCK_MAX_MS)
        self._clock_served = (offset, now)
        return now

    def clock_ms(self) -> int:
        """The ledger clock in ms (see :mod:`dtp.ledger.local` for wall and frozen modes)."""
        return self._read_one(self._now)

    def clock_frozen(self) -> bool:
        """Whether the clock is frozen."""
        return self._read_one(lambda: self._meta("clock_frozen") == "1")

    def set_clock(self, ms: int, *, allow_backwards: bool = False) -> None:
        """Freeze the clock at ``ms``. Going backwards raises InvalidArgument (a
        ValueError) unless ``allow_backwards`` (for setting up a fresh test ledger); so
        does a time past :data:`CLOCK_MAX_MS`."""
        _clock(ms, "the clock")

        def apply() -> None:
            if not allow_backwards and ms < self._now():
                raise InvalidArgument(f"The clock cannot go back from {self._now()} to {ms} ms.")
            self._set_meta("clock_frozen", 1)
            self._set_meta("clock_ms", ms)
            self._set_meta("clock_floor", ms)

        self._write(apply)

    def freeze_clock(self) -> int:
        """Freeze the clock at its current time; returns it."""

        def apply() -> int:
            now = self._now()
            self._set_meta("clock_frozen", 1)
            self._set_meta("clock_ms", now)
            return now

        return self._write(apply)

    def unfreeze_clock(self) -> None:
        """Let the clock follow wall time again, continuing from its current value."""

        def apply() -> None:
            now = self._now()
            self._set_meta("clock_offset", now - _wall_ms())
            self._set_meta("clock_floor", now)
            self._set_meta("clock_frozen", 0)

        self._write(apply)

    def advance_clock(self, ms: int) -> int:
        """Move the clock forward by ``ms`` (in either mode); returns the new time. A step
        past :data:`CLOCK_MAX_MS` raises InvalidArgument and moves nothing."""
        u64(ms, "the clock step")

        def apply() -> int:
            meta = self._metas()
            now = self._now(meta) + ms
            if now > CLOCK_MAX_MS:
                raise InvalidArgument(
                    f"The clock cannot advance {ms} ms from {now - ms}: that is past "
                    f"2**63-1 ms, the ledger's latest time."
                )
            if meta["clock_frozen"] == "1":
                self._set_meta("clock_ms", now)
            else:
                # from the clock as it reads, not by adding to the offset: when the wall
                # clock has stepped back, the floor holds the clock, and an offset moved
                # by ms alone would leave it under the floor (no step at all)
                self._set_meta("clock_offset", now - _wall_ms())
            self._set_meta("clock_floor", now)
            return now

        return self._write(apply)

    def epoch(self) -> int:
        """The current epoch."""
        return self._read_one(lambda: rules.stored_int(self._meta("epoch")))

    def advance_epoch(self) -> int:
        """Start the next epoch; returns it."""

        def apply() -> int:
            epoch = rules.stored_int(self._meta("epoch")) + 1
            self._set_meta("epoch", epoch)
            return epoch

        return self._write(apply)
