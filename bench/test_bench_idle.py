"""pytest-benchmark body of the ``idle_memory_10k`` row (bench/idle_rows.py): each side
once, with 200 connections instead of 10,000 -- the body works and reports a memory
size per connection; the figure itself is compare.py's."""

from __future__ import annotations

import pytest

from bench.idle_rows import idle_memory_10k
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_idle_memory(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, idle_memory_10k(connections=200), side)
