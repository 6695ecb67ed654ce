"""pytest-benchmark bodies of the ``idle_memory_10k`` and ``connections_10k`` rows
(bench/idle_rows.py): each side once, with 200 connections instead of 10,000 -- the
bodies work and report a memory size per connection, or the seconds the opening took;
the figures themselves are compare.py's."""

from __future__ import annotations

import pytest

from bench.idle_rows import connections_10k, idle_memory_10k
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_idle_memory(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, idle_memory_10k(connections=200), side)


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_connections_10k(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, connections_10k(connections=200), side)
