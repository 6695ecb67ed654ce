"""The hybrid clock that assigns HAM states: docs/graph.md, "States", says the rule
(``max(wall clock in whole ms, last state + STEP)``), the *machine state* past which a
peer's update is deferred, and why states stay finite. The wall clock is injectable
(``now_ms``) so tests control time.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable

from dtp.errors import ErrorCode, LocalProtocolError

STEP = 1.0 / 256
"""Smallest increment between two states of one peer, in ms (exact in binary64 for any
date before the year 2500: the ulp of 2**44 ms is 2**-8)."""

MAX_DRIFT_MS = float(2**44)
"""The largest ``max_drift_ms`` (about 557 years): far beyond any clock skew between
honest peers, and small enough that the machine state stays a date -- a drift near the
largest float let a peer's update at that float be merged, and the next write of its
field needed a state past it."""


def wall_clock_ms() -> float:
    """The system wall clock in milliseconds since the Unix epoch."""
    return time.time_ns() / 1_000_000


class HybridClock:
    """Issues strictly increasing HAM states from a wall clock and a counter.

    ``now_ms``: the wall clock (ms since the epoch); ``max_drift_ms``: how far ahead of
    it an incoming state may be and still be applied at once; ``last``: the highest
    state already issued (restored from storage after a restart).
    """

    def __init__(
        self,
        now_ms: Callable[[], float] = wall_clock_ms,
        *,
        max_drift_ms: float = 1000.0,
        last: float = 0.0,
    ) -> None:
        if not 0 <= max_drift_ms <= MAX_DRIFT_MS:  # (NaN fails both)
            raise ValueError(f"max_drift_ms must be a number in 0..{MAX_DRIFT_MS:.0f} (2**44)")
        self._now = now_ms
        self.max_drift_ms = max_drift_ms
        self._last = last
        self._lock = threading.Lock()

    @property
    def last(self) -> float:
        """The highest state issued so far."""
        return self._last

    def now(self) -> float:
        """The wall clock, in ms (TypeError / ValueError, naming ``now_ms``, when the
        injected clock returns something else than a finite number)."""
        value = self._now()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"now_ms() must return a number of ms, not {type(value).__name__}")
        try:
            ms = float(value)
        except OverflowError:  # an int beyond the float range
            ms = math.inf
        if not math.isfinite(ms):
            # (NaN would fail deep in math.floor for a write, and in the HAM merge for a
            # peer's batch, each with its own unrelated message)
            raise ValueError(f"now_ms() must return a finite number of ms, not {repr(value)[:40]}")
        return ms

    def machine_state(self) -> float:
        """Updates with a state above this are deferred (protocol.md 6.3)."""
        return self.now() + self.max_drift_ms

    def next(self, after: float | None = None) -> float:
        """A new state, greater than every state issued before and than ``after``.

        Merging a peer's state does not move this clock: a write
        (:meth:`~dtp.graph._store.Graph.put`) passes the states the table holds for the
        fields it writes as ``after``, so it wins over what was merged, however far
        ahead the peer's clock ran.

        LocalProtocolError (``HAM_STATE``) when that state would not be finite (``after``
        is the largest float); the clock is left as it was, so other fields can still
        be written."""
        with self._lock:
            floor = self._last if after is None or after < self._last else after
            state = float(math.floor(self.now()))
            if state <= floor:
                state = floor + STEP
                if state <= floor:  # beyond the range where STEP is exact: next float up
                    state = math.nextafter(floor, math.inf)
            if not math.isfinite(state):
                raise LocalProtocolError(
                    "no HAM state is left above the field's (it holds the largest float)",
                    ErrorCode.HAM_STATE,
                )
            self._last = state
            return state


__all__ = ["MAX_DRIFT_MS", "STEP", "HybridClock", "wall_clock_ms"]
