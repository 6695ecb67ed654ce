"""The daemon's ledger calls, timed and counted: how long each kind of call takes, which
fail and why, and whether the ledger answers at all (the metrics' ``dtp_ledger_*``, the
status page's ledger health, ``dtp status``'s ``ledger`` line).

:func:`watch_ledger` wraps the public methods of the daemon's ledger object in place
(instance attributes shadowing the class's: ``isinstance`` checks and every holder of
the object see the same ledger), so every call any part of the daemon makes is seen,
from whatever thread (most run in ``asyncio.to_thread``). Only the outermost call of a
thread is recorded: a ``settle`` that reads the connection first counts once, as a
``settle``. The figures are kept here, under a lock; the metrics read them at each
scrape, never adding work per call beyond a clock read and a lock.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dtp.errors import ChainError, LedgerUnavailable

__all__ = ["BUCKETS", "LedgerCalls", "OperationStats", "watch_ledger"]

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the latency histogram: a LocalLedger call takes a
millisecond or so, a Sui read a round trip to the node, a transaction seconds."""

_SKIPPED = frozenset({"close"})
"""Methods not timed: no ledger work (closing the object)."""


@dataclass
class OperationStats:
    """The calls of one ledger method."""

    count: int = 0
    seconds: float = 0.0
    """The time all of them took."""
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    """Calls that took at most each bound of :data:`BUCKETS` (not cumulative)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Calls that raised, by error name (a :class:`ChainError`'s ``name``, else the
    exception's class)."""


@dataclass
class LedgerCalls:
    """The figures of every ledger call the daemon made (see the module docs)."""

    operations: dict[str, OperationStats] = field(default_factory=dict)
    last_ok: float | None = None
    """Wall time the ledger last answered (a result, or a refusal: it answered)."""
    last_unavailable: float | None = None
    """Wall time a call last found the ledger unavailable (not answering, its file
    unusable), and what it said."""
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, operation: str, seconds: float, error: BaseException | None) -> None:
        """Count one call of ``operation`` that took ``seconds`` (and raised ``error``)."""
        now = time.time()
        with self._lock:
            stats = self.operations.get(operation)
            if stats is None:
                stats = self.operations[operation] = OperationStats()
            stats.count += 1
            stats.seconds += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    stats.buckets[i] += 1
                    break
            if error is None:
                self.last_ok = now
                return
            name = error.name if isinstance(error, ChainError) and error.name else None
            name = name or type(error).__name__
            stats.errors[name] = stats.errors.get(name, 0) + 1
            if isinstance(error, LedgerUnavailable) or not isinstance(error, ChainError):
                # (a refusal is the ledger answering: only these say it does not)
                self.last_unavailable = now
                self.last_error = f"{operation}: {error}"[:500]
            else:
                self.last_ok = now

    def snapshot(self) -> dict[str, OperationStats]:
        """A copy of the figures by operation, for a reader on another thread."""
        with self._lock:
            return {
                name: OperationStats(s.count, s.seconds, list(s.buckets), dict(s.errors))
                for name, s in self.operations.items()
            }

    @property
    def up(self) -> bool | None:
        """Whether the ledger answered the latest calls: True when its last answer came
        after its last unavailability, False otherwise, None before any call."""
        with self._lock:
            if self.last_ok is None and self.last_unavailable is None:
                return None
            if self.last_unavailable is None:
                return True
            return self.last_ok is not None and self.last_ok > self.last_unavailable

    def health(self) -> dict[str, Any]:
        """The ledger's health for the status: ``state`` (``ok``, ``unavailable`` or
        ``unknown``), the calls made and failed, and the last error and when."""
        up = self.up
        with self._lock:
            calls = sum(s.count for s in self.operations.values())
            errors = sum(sum(s.errors.values()) for s in self.operations.values())
            seconds = sum(s.seconds for s in self.operations.values())
            return {
                "state": "unknown" if up is None else ("ok" if up else "unavailable"),
                "calls": calls,
                "errors": errors,
                "mean_seconds": round(seconds / calls, 6) if calls else None,
                "last_ok": self.last_ok,
                "last_unavailable": self.last_unavailable,
                "last_error": self.last_error,
            }


def watch_ledger(ledger: object, calls: LedgerCalls) -> LedgerCalls:
    """Time every public method of ``ledger`` (see the module docs) into ``calls``;
    returns ``calls``. Coroutine and generator methods, static and class methods, and
    properties are left as they are.

    Each wrapper looks its method up on the class at every call, not once: a method
    patched on the class later (a test's fault, a fix loaded at run time) is the one
    called, and timed."""
    depth = threading.local()
    kind = type(ledger)

    def timed(name: str) -> Callable[..., Any]:
        @functools.wraps(getattr(kind, name))
        def call(*args: Any, **kwargs: Any) -> Any:
            attr = getattr(kind, name)
            method = attr.__get__(ledger, kind) if hasattr(attr, "__get__") else attr
            outer = not getattr(depth, "n", 0)
            depth.n = getattr(depth, "n", 0) + 1
            start = time.perf_counter()
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if outer:
                    calls.record(name, time.perf_counter() - start, exc)
                raise
            finally:
                depth.n -= 1
            if outer:
                calls.record(name, time.perf_counter() - start, None)
            return result

        return call

    for name, attr in inspect.getmembers(kind):
        if name.startswith("_") or name in _SKIPPED or not inspect.isfunction(attr):
            continue
        if inspect.iscoroutinefunction(attr) or inspect.isgeneratorfunction(attr):
            continue
        if isinstance(inspect.getattr_static(kind, name), staticmethod | classmethod):
            continue
        setattr(ledger, name, timed(name))
    return calls
