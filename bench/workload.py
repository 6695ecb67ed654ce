"""The benchmark row type shared by every bench module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Floor(float):
    """A bar that is a floor, not a target: the row sits near the limit of the design's
    shape (a cffi core under Python connection objects), and no change may read below
    it. ``bar=Floor(0.84)`` compares and prints as the number itself."""

    def __repr__(self) -> str:
        return f"Floor({float(self)!r})"


def bar_kind(bar: float | None) -> str:
    """``"floor"`` for a :class:`Floor`, ``"bar"`` for any other figure, ``""`` for a
    row that only reports."""
    if bar is None:
        return ""
    return "floor" if isinstance(bar, Floor) else "bar"


@dataclass
class Workload:
    name: str
    unit: str
    units: float  # units of work per call of `ours` / `peer`
    ours: Callable[[], object]
    peer: Callable[[], object] | None = None
    peer_units: float | None = None
    peer_rate: Callable[[float], float] | None = None  # seconds -> rate, measured elsewhere
    #: the ratio the row must reach (a target), or a :class:`Floor` it must not fall below
    bar: float | None = None
    note: str = ""
    close: Callable[[], None] | None = None  # stops servers the workload started
    #: ``ours()`` and ``peer()`` each return the figure itself (a memory size, say),
    #: measured once a round, rather than doing ``units`` of work a call to be timed
    measured: bool = False
    #: the figure is a cost: the row's ratio is peer / ours (still "higher is better")
    lower_is_better: bool = False
    #: rounds for this row (None: compare.py's), for rows whose one round takes minutes
    rounds: int | None = None


def run_side(benchmark: Any, w: Workload, side: str) -> None:
    """One side (``"ours"`` or ``"peer"``) of a started workload under pytest-benchmark:
    three rounds, or one when benchmarks are disabled (the default test run, which only
    checks that the body works); then stop what the workload started."""
    try:
        benchmark.group = w.name
        op = w.ours if side == "ours" else w.peer
        assert op is not None
        benchmark.pedantic(op, rounds=3 if benchmark.enabled else 1, iterations=1)
    finally:
        if w.close is not None:
            w.close()
