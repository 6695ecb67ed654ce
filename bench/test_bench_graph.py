"""pytest-benchmark suite for the ham_merge_vs_gun row of bench/graph_rows.py: ours (the
C batch merge) timed here; the peer, GunDB in Node.js, runs once in the row's setup,
which checks that both merge the stream into the same graph (compare.py times it)."""

from __future__ import annotations

import pytest

from bench import graph_rows, gun_ham


@pytest.mark.skipif(not gun_ham.available(), reason="node and npm are needed to run GunDB")
def test_ham_merge_vs_gun(benchmark) -> None:  # type: ignore[no-untyped-def]
    w = graph_rows.ham_merge_vs_gun()
    benchmark.group = w.name
    benchmark.extra_info["unit"] = w.unit
    benchmark.pedantic(w.ours, rounds=3 if benchmark.enabled else 1, iterations=1)
