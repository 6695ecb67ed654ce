"""``dtp migrate`` (docs/sui.md, "Upgrading the package"): on the node stand-in restarted
with the package at version 2, the AdminCap's holder migrates every object the ledger's
events name (``--all``), or those it names; a second run finds them current; on the
embedded ledger, whose code is version 1, everything is current already."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.cli.chain_cli import Cli


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    return Cli(tmp_path, capsys)


def test_migrate_all_after_an_upgrade_on_the_stand_in(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = cli.json("keys", "new")["sui_address"]
    server, client = HostIdentity.generate(), HostIdentity.generate()
    state = tmp_path / "node"
    with SuiNodeStandIn(state, clock_ms=1_000, publisher=admin) as node:
        for who in (admin, server.sui_address, client.sui_address):
            node.faucet(who, 10**10)
        package, admin_cap = node.package_id, node.admin_cap
        assert admin_cap is not None
        with SuiLedger(SuiConfig(node.url, package)) as old:
            host = old.create_host(server, server.noise_public)
            old.add_service(server, host, 7, "raw", Sla(10, 5, 1_000))
            pool = old.create_sponsor_pool(server, host, 7, 5_000, max_pledge=1_000, lanes=2)
            cap = old.create_spending_cap(client, 10**9)
            opened = old.open_connection(client, host, 7, cap, 2_000)
            lanes = old.get_sponsor_pool(pool).lanes
    expected = {host, pool, *lanes, cap, opened.connection_id, opened.escrow_id}
    with SuiNodeStandIn(state, package=package, package_version=2) as node:
        cli.ledger_args = ["--ledger", f"sui:{node.url}", "--sui-package", package]
        # (the SDK of the package it was upgraded to would say 2 itself)
        monkeypatch.setenv("DTP_SUI_PACKAGE_VERSION", "2")
        named = cli.json("migrate", host, "--admin-cap", admin_cap)
        assert named["package_version"] == 2
        assert named["migrated"] == [
            {"object": host, "struct": "Host", "version": 2, "from_version": 1}
        ]
        every = cli.json("migrate", "--all", "--admin-cap", admin_cap)
        assert {row["object"] for row in every["migrated"]} == expected - {host}
        assert [row["object"] for row in every["current"]] == [host]
        assert not every["failed"] and not every["deleted"]
        again = cli.json("migrate", "--all", "--admin-cap", admin_cap)
        assert not again["migrated"] and {row["object"] for row in again["current"]} == expected
        with SuiLedger(SuiConfig(node.url, package, package_version=2)) as new:
            new.set_endpoints(server, host, [])  # (the package of version 2 serves it)
            assert new.settle(server, opened.connection_id).refunded == 2_000
        out = node.audit()
        assert out["minted"] == out["balances"] + out["gas"] + out["escrows"] + out["broadcasts"]


def test_every_object_is_current_on_the_embedded_ledger(cli: Cli) -> None:
    address = cli.json("keys", "new")["sui_address"]
    cli.fund(address, 10**9)
    host = cli.json("host", "create")["host"]
    result = cli.json("migrate", "--all")
    assert result["package_version"] == 1 and not result["migrated"] and not result["failed"]
    assert [row["object"] for row in result["current"]] == [host]
    err = cli("migrate", code=2)
    assert "--all" in err
