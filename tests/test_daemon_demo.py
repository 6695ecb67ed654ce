"""The daemon step of ``dtp demo``: real daemon and forwarder processes, exact fees."""

from __future__ import annotations

from dtp.chain.objects import Sla
from dtp.daemon.demo_step import run_daemon_step
from dtp.escrow import fee


def test_demo_step_moves_data_and_settles_exact_fees() -> None:
    lines: list[str] = []
    result = run_daemon_step(quick=True, say=lines.append)
    assert result.intact and result.tunnels == 4
    assert result.bytes_each_way == 2 << 20
    # the SLA of the demo: 10 MIST/KiB both ways, 100 MIST per tunnel
    expected = fee(Sla(10, 100, 5_000_000), 2 * result.bytes_each_way, 4)
    assert result.fees_earned == result.fees_claimed == expected
    assert result.refunded == 50_000_000 - expected
    assert result.conserved
    assert result.service.startswith("dtp://0x") and result.service.endswith(":7000")
    assert any("forwarder listens" in line for line in lines)
    assert result.megabytes_per_second > 0
    # balances before and after: the provider gained exactly what the client paid
    p0, p1 = result.provider_balance
    c0, c1 = result.client_balance
    assert p1 - p0 == expected and c0 - c1 == expected
    # the client on the deny list got nothing through and paid nothing
    assert result.denied and result.denied_paid_nothing
