"""bench/cpu_per_call.py's connect rows, a few connections each: both processes' CPU is
read, and a row that cannot connect fails instead of printing zeros."""

from __future__ import annotations

import pytest

from bench import cpu_per_call


@pytest.mark.parametrize("name", ["connect", "connect_tls", "hostid_connect"])
def test_connect_rows_read_both_sides(name: str) -> None:
    r = cpu_per_call.row(name, 6)
    assert r["client_us"] > 0
    if name != "connect_tls":  # (the TLS peer's threads end with their connection)
        assert r["server_us"] > 0
