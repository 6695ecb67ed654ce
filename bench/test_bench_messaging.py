"""pytest-benchmark suite for the RPC rows of bench/messaging_rows.py (fewer calls than
compare.py's). Each test starts its servers in other processes and stops them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench import messaging_rows
from bench.workload import Workload, run_side

ROWS: dict[str, Callable[[], Workload]] = {
    "rpc_roundtrip": lambda: messaging_rows.rpc_roundtrip(50),
    "rpc_roundtrip_zmq": lambda: messaging_rows.rpc_roundtrip_zmq(50),
    "rpc_roundtrip_uvloop": lambda: messaging_rows.rpc_roundtrip_uvloop(50),
    "rpc_raw_frame": lambda: messaging_rows.rpc_raw_frame(50),
    "rpc_pipelined": lambda: messaging_rows.rpc_pipelined(200, 16),
}


@pytest.mark.parametrize("name", list(ROWS))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_messaging(benchmark, name: str, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, ROWS[name](), side)
