"""The benchmark row type shared by every bench module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Workload:
    name: str
    unit: str
    units: float  # units of work per call of `ours` / `peer`
    ours: Callable[[], object]
    peer: Callable[[], object] | None = None
    peer_units: float | None = None
    peer_rate: Callable[[float], float] | None = None  # seconds -> rate, measured elsewhere
    bar: float | None = None
    note: str = ""
    close: Callable[[], None] | None = None  # stops servers the workload started
