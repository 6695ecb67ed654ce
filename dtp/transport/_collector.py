"""CPython's cyclic garbage collector in a process that serves connections.

A full collection walks every tracked object, every open connection's too: with 10,000
connections open, at the default thresholds, that took a quarter to a third of a
server's CPU (docs/benchmarks.md, ``connections_10k``). A closed connection leaves no
reference cycle, so a server loses little by collecting seldom. When the first DTP
server of a process is made, :func:`tune_for_serving` therefore, once, freezes what
exists (``gc.freeze()``: modules and start-up state are never walked again) and raises
the youngest generation's threshold to :data:`SERVING_THRESHOLD0` (full collections
about fourteen times less often) -- unless the collector is off, the program set
thresholds of its own, or ``DTP_SERVER_GC=default``. :func:`collector_tuned` says
whether it did."""

from __future__ import annotations

import gc
import os
import threading
from typing import Final

__all__ = ["SERVING_THRESHOLD0", "collector_tuned", "tune_for_serving"]

#: The youngest generation's threshold while serving (CPython's default: 700).
SERVING_THRESHOLD0: Final = 10_000
#: CPython's default thresholds: only these are replaced (a program's own are kept).
_DEFAULT_THRESHOLDS: Final = (700, 10, 10)
#: The environment variable that leaves the collector as it is: ``default``.
ENV: Final = "DTP_SERVER_GC"

_lock = threading.Lock()
_done = False
_tuned = False


def tune_for_serving() -> bool:
    """Tune the collector for serving (see the module docs), the first time a process
    calls it; whether it was tuned (by this call or an earlier one)."""
    global _done, _tuned
    with _lock:
        if _done:
            return _tuned
        _done = True
        if os.environ.get(ENV, "").strip().lower() == "default":
            return False
        if not gc.isenabled() or gc.get_threshold() != _DEFAULT_THRESHOLDS:
            return False
        gc.collect()  # (what is garbage now is not frozen for good)
        gc.freeze()
        gc.set_threshold(SERVING_THRESHOLD0, *_DEFAULT_THRESHOLDS[1:])
        _tuned = True
        return True


def collector_tuned() -> bool:
    """Whether :func:`tune_for_serving` tuned this process's collector."""
    return _tuned
