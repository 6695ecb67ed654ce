"""pytest-benchmark suite for the tunnel rows (smaller transfers than compare.py's).

Each test starts the backend, a daemon and a forwarder (ours) and the TLS relay pair
(peer) in other processes and stops them afterwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench import tunnel_rows
from bench.workload import Workload

ROWS: dict[str, Callable[[], Workload]] = {
    "tunnel_bulk": lambda: tunnel_rows.tunnel_bulk(8 << 20),
    "tunnel_requests": lambda: tunnel_rows.tunnel_requests(50),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_tunnel(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    w = ROWS[name]()
    try:
        benchmark.group = name
        assert w.peer is not None
        benchmark.pedantic(w.ours, rounds=3 if benchmark.enabled else 1, iterations=1)
        w.peer()
    finally:
        assert w.close is not None
        w.close()
