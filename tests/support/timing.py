"""Time bounds for tests that run beside the rest of the suite, and the quiet probe.

A bound on wall-clock time holds on a quiet machine and fails under load: six test
processes on two cores stretch a one-second connect or a one-second window of a
transfer. Such a test states two bounds with :func:`bound`: the figure the code is
meant to reach, checked when the timing probe runs (``DTP_TIMING_PROBE=1``,
scripts/timing_probe.sh: the files alone, after the suite), and a bound that still
tells the failure the test is about (a lockout waits for a handshake timeout, a burst
moves five times the limit) and holds under load, checked in the parallel suite. The
rule itself is checked on a virtual clock where the engines take ``now``.
"""

from __future__ import annotations

import os

#: Whether the quiet-machine figures are checked (scripts/timing_probe.sh sets it)
PROBE = os.environ.get("DTP_TIMING_PROBE") == "1"


def bound(quiet: float, loaded: float) -> float:
    """``quiet`` when the timing probe runs, else ``loaded`` (the bound that holds beside
    the rest of the suite)."""
    return quiet if PROBE else loaded
