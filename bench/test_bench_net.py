"""pytest-benchmark suite for the network rows (smaller transfers than compare.py's).

Each test starts its servers in other processes and stops them afterwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench import net, udp_rows
from bench.workload import run_side
from bench.workloads import Workload

ROWS: dict[str, Callable[[], Workload]] = {
    "tcp_bulk_blocking": lambda: net.tcp_bulk_blocking(16 << 20),
    "tcp_bulk_asyncio": lambda: net.tcp_bulk_asyncio(16 << 20),
    "tcp_bulk_uvloop": lambda: net.tcp_bulk_uvloop(16 << 20),
    "pingpong_100b": lambda: net.pingpong_100b(200),
    "connect_rate": lambda: net.connect_rate(5),
    "udp_tunnel_pps": lambda: udp_rows.udp_tunnel_pps(256),
}


@pytest.mark.parametrize("name", list(ROWS))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_net(benchmark, name: str, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, ROWS[name](), side)
