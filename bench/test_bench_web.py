"""pytest-benchmark suite for bench/web_rows.py (fewer calls than compare.py's): each
side of ``ws_rpc_roundtrip`` runs against its own servers, which the test stops."""

from __future__ import annotations

import pytest

from bench import web_rows
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ws_rpc_roundtrip(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, web_rows.ws_rpc_roundtrip(20), side)
