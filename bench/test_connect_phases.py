"""bench/connect_phases.py on a few connections: every phase it names is still where it
is named (a renamed function fails here, not silently in a reading), and each side's
main phases ran once a connection."""

from __future__ import annotations

from bench import connect_phases


def test_hostid_phases_on_both_sides() -> None:
    r = connect_phases.measure(6)
    assert r["missing"] == []
    assert r["client_us"] > 0 and r["server_us"] > 0
    for phase in ("resolve_service", "PendingOpen.execute", "connect", "DTPSocket.close"):
        assert r["client"][phase][1] == 1.0, phase
    for phase in ("while_opening", "LocalLedger.settle_with_receipt", "served_refusal"):
        assert r["server"][phase][1] == 1.0, phase


def test_plain_phases() -> None:
    r = connect_phases.measure(6, plain=True)
    assert r["client"]["connect"][1] == 1.0
    assert "PendingOpen.execute" not in r["client"]
    assert "server" not in r
