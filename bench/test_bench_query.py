"""pytest-benchmark suite for the graph_query_1m row of bench/query_rows.py, on a forum
of 20 users (20,060 fields) so that the default test run stays quick: the query and the
get/walk loops, each checked to find the same replies (compare.py runs the 1 M row)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import query_rows
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_graph_query(benchmark: Any, side: str) -> None:
    w = query_rows.graph_query(users=20)
    assert "20,060 fields" in w.note
    run_side(benchmark, w, side)
