"""pytest-benchmark suite for bench/sui_rows.py (smaller than compare.py's): connect by
host ID and a paid daemon transfer, each with its ledger on the Sui node stand-in (a
process, 0.3 s a transaction) and on a LocalLedger file."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench import sui_rows
from bench.workload import Workload, run_side

ROWS: dict[str, Callable[[], Workload]] = {
    "hostid_connect_rate_sui": lambda: sui_rows.hostid_connect_rate_sui(1),
    "daemon_bulk_sui": lambda: sui_rows.daemon_bulk_sui(8 << 20),
}


@pytest.mark.parametrize("name", list(ROWS))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_sui(benchmark, name: str, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, ROWS[name](), side)


def test_the_latency_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sui_rows.LATENCY_ENV, raising=False)
    assert sui_rows.sui_latency() == 0.3
    monkeypatch.setenv(sui_rows.LATENCY_ENV, "0.05")
    assert sui_rows.sui_latency() == 0.05
    for bad in ("-1", "slow", "60"):
        monkeypatch.setenv(sui_rows.LATENCY_ENV, bad)
        with pytest.raises(ValueError, match="DTP_BENCH_SUI_LATENCY must be seconds"):
            sui_rows.sui_latency()
