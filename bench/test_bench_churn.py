"""pytest-benchmark body of the ``churn_memory`` row (bench/churn_rows.py): each side
once, with 300 connections instead of 80,000 -- the body works and reports a memory
size; the figure itself is compare.py's."""

from __future__ import annotations

import pytest

from bench.churn_rows import churn_memory
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_churn_memory(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, churn_memory(connections=300), side)
