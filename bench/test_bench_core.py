"""pytest-benchmark suite for the C core rows of bench/compare.py (ours and peer each).

Run with ``pytest bench --benchmark-enable``; under the default test run
(``--benchmark-disable``) each body runs once, so the workloads stay exercised.
"""

from __future__ import annotations

import pytest

from bench.workloads import ALL

ROWS = ["aead_roundtrip_1k", "frame_decode_small", "ham_merge", "aead_seal_16k"]


@pytest.mark.parametrize("name", ROWS)
def test_ours(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    w = ALL[name]()
    benchmark.group = name
    benchmark.extra_info["unit"] = w.unit
    benchmark(w.ours)


@pytest.mark.parametrize("name", ["aead_roundtrip_1k", "frame_decode_small", "ham_merge"])
def test_peer(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    w = ALL[name]()
    assert w.peer is not None
    benchmark.group = name
    benchmark(w.peer)
