"""pytest-benchmark suite for bench/hostid_rows.py (smaller than compare.py's): connect by
host ID to a paid service, and a metered bulk transfer, each against its peer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench import hostid_rows
from bench.workload import Workload, run_side

ROWS: dict[str, Callable[[], Workload]] = {
    "hostid_connect_rate": lambda: hostid_rows.hostid_connect_rate(3),
    "paid_bulk": lambda: hostid_rows.paid_bulk(16 << 20),
}


@pytest.mark.parametrize("name", list(ROWS))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_hostid(benchmark, name: str, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, ROWS[name](), side)
