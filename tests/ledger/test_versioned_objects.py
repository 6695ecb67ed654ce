"""Versioned shared objects (docs/escrow.md "Versions"), on LocalLedger -- whose
``package_version`` stands for the package code of that version -- and on SuiLedger
against the node stand-in, whose state restarted with a higher ``package_version`` stands
for the package upgraded: objects of version 1 are refused by the code of version 2
until the AdminCap's holder migrates them, and once migrated the code of version 1
refuses them; a migration goes only forward; a refused call moves nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtp.errors import InsufficientFunds, InvalidArgument, ObjectNotFound, WrongSigner, WrongVersion
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger._versions import MIGRATE, VERSIONED
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.local.rules import FUNCTIONS
from dtp.ledger.local.rules._versions import FUNCTIONS as MIGRATIONS
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.support.paths import MOVE_SOURCES

PORT = 7
SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1_000)
FUNDS = 10**10


@dataclass
class Upgrade:
    """One chain seen through the package before (``old``) and after (``new``) an upgrade
    to version 2, with the objects the old one made: a Host with a service, a client's
    SpendingCap and a connection."""

    old: Ledger
    new: Ledger
    admin: HostIdentity
    server: HostIdentity
    client: HostIdentity
    host: str
    cap: str
    connection: str
    escrow: str
    audit: object

    def conserved(self) -> None:
        out = self.audit()  # type: ignore[operator]
        assert out["minted"] == out["balances"] + out["escrows"] + out["broadcasts"]


def _made_by(ledger: Ledger, server: HostIdentity, client: HostIdentity) -> tuple[str, ...]:
    host = ledger.create_host(server, server.noise_public, [b"tcp://127.0.0.1:7000"])
    ledger.add_service(server, host, PORT, "raw", SLA)
    cap = ledger.create_spending_cap(client, 10**9)
    opened = ledger.open_connection(client, host, PORT, cap, 5_000)
    return host, cap, opened.connection_id, opened.escrow_id


def _local(tmp_path: Path) -> Iterator[Upgrade]:
    admin, server, client = (HostIdentity.generate() for _ in range(3))
    path = tmp_path / "ledger.sqlite"
    old = LocalLedger(path, clock_ms=1_000)
    new = LocalLedger(path, package_version=2)
    try:
        old.create_admin_cap(admin)
        for who in (admin, server, client):
            old.faucet(who.sui_address, FUNDS)
        ids = _made_by(old, server, client)
        yield Upgrade(old, new, admin, server, client, *ids, old.audit)
    finally:
        new.close()
        old.close()


def _sui(tmp_path: Path) -> Iterator[Upgrade]:
    admin, server, client = (HostIdentity.generate() for _ in range(3))
    state = tmp_path / "node"
    with SuiNodeStandIn(state, clock_ms=1_000, publisher=admin.sui_address) as node:
        for who in (admin, server, client):
            node.faucet(who.sui_address, FUNDS)
        old = SuiLedger(SuiConfig(node.url, node.package_id, admin_cap=node.admin_cap))
        try:
            ids = _made_by(old, server, client)
        finally:
            old.close()
        package = node.package_id
    # the same chain, its package upgraded: the node runs the code of version 2
    with SuiNodeStandIn(state, package=package, package_version=2) as node:
        config = SuiConfig(node.url, package, admin_cap=node.admin_cap, package_version=2)
        new = SuiLedger(config)
        old = _OldPackage(node.state.ledger.path)
        try:

            def audit() -> dict[str, int]:
                out = node.audit()
                out["balances"] += out.pop("gas")
                return out

            yield Upgrade(old, new, admin, server, client, *ids, audit)
        finally:
            new.close()
            old.close()


def _OldPackage(path: str) -> LocalLedger:
    """The package of version 1 on the stand-in's chain: one node runs one package
    version, so the old package's calls run on its state file through a handle of
    version 1 (the same rule code the node runs)."""
    return LocalLedger(path)


@pytest.fixture(params=["local", "sui"])
def upgrade(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Upgrade]:
    yield from (_local if request.param == "local" else _sui)(tmp_path)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Upgrade]:
    yield from _local(tmp_path)


def test_objects_of_the_old_version_are_refused_by_the_new_code_until_migrated(
    upgrade: Upgrade,
) -> None:
    new, server, client = upgrade.new, upgrade.server, upgrade.client
    assert upgrade.new.recorded_version(upgrade.host) == ("Host", 1)
    before = new.get_connection(upgrade.connection)
    # a write, a read-only use (an open reads the Host) and a settlement: all refused
    with pytest.raises(WrongVersion) as wrote:
        new.set_endpoints(server, upgrade.host, [])
    assert wrote.value.name == "EWrongVersion" and wrote.value.module == "version"
    with pytest.raises(WrongVersion):
        new.open_connection(client, upgrade.host, PORT, upgrade.cap, 5_000)
    with pytest.raises(WrongVersion):
        new.settle(server, upgrade.connection)
    assert new.get_connection(upgrade.connection).settled == before.settled is False
    upgrade.conserved()


def test_only_the_admin_migrates_and_only_forward(upgrade: Upgrade) -> None:
    new, admin = upgrade.new, upgrade.admin
    with pytest.raises(WrongSigner):
        new.migrate(upgrade.server, upgrade.host)
    for object_id in (upgrade.host, upgrade.cap, upgrade.connection, upgrade.escrow):
        assert new.migrate(admin, object_id) == 2
        assert new.recorded_version(object_id)[1] == 2
    assert new.get_host(upgrade.host).package_version == 2
    with pytest.raises(InvalidArgument) as again:
        new.migrate(admin, upgrade.host)
    assert again.value.name == "ENotUpgrade"
    upgrade.conserved()


def test_once_migrated_the_new_code_serves_and_the_old_refuses(upgrade: Upgrade) -> None:
    new, old, admin = upgrade.new, upgrade.old, upgrade.admin
    server, client = upgrade.server, upgrade.client
    for object_id in (upgrade.host, upgrade.cap, upgrade.connection, upgrade.escrow):
        new.migrate(admin, object_id)
    # the old package can no longer open through the Host, nor settle the connection
    with pytest.raises(WrongVersion):
        old.open_connection(client, upgrade.host, PORT, upgrade.cap, 5_000)
    with pytest.raises(WrongVersion):
        old.settle(server, upgrade.connection)
    refunded = new.settle(server, upgrade.connection).refunded
    assert refunded == 5_000
    # what the new code makes records its version, and the old code refuses it too
    opened = new.open_connection(client, upgrade.host, PORT, upgrade.cap, 2_000)
    assert new.get_connection(opened.connection_id).package_version == 2
    with pytest.raises(WrongVersion):
        old.close_connection(client, opened.connection_id)
    upgrade.conserved()


# -- LocalLedger: the order of the checks, and files from before ----------------------------


def test_the_version_is_checked_after_the_inputs_and_the_coin(local: Upgrade) -> None:
    # as on Sui: every input object is loaded and the coin split before the Move call,
    # whose first lines check the versions, before its other checks
    up = local
    new, client = up.new, up.client
    with pytest.raises(ObjectNotFound):
        new.open_connection(client, up.host, PORT, "0x" + "ee" * 32, 5_000)
    with pytest.raises(InsufficientFunds):
        new.open_connection(client, up.host, PORT, up.cap, FUNDS * 2)
    # another's cap (spending_cap::ENotCapOwner) is the Move code's next check
    with pytest.raises(WrongVersion):
        new.open_connection(up.server, up.host, PORT, up.cap, 5_000)


def test_a_files_object_without_a_version_reads_as_the_first(local: Upgrade) -> None:
    up = local
    assert isinstance(up.old, LocalLedger)
    db = up.old._db
    row = db.execute("SELECT data FROM objects WHERE id = ?", (up.host,)).fetchone()
    data = json.loads(row[0])
    del data["version"]
    db.execute("UPDATE objects SET data = ? WHERE id = ?", (json.dumps(data), up.host))
    assert up.old.recorded_version(up.host) == ("Host", 1)
    assert up.old.get_host(up.host).package_version == 1
    up.old.set_endpoints(up.server, up.host, [])  # (version 1 code serves it)
    assert up.new.migrate(up.admin, up.host) == 2


def test_the_embedded_ledger_has_one_admin_cap(local: Upgrade) -> None:
    up = local
    assert isinstance(up.old, LocalLedger)
    assert up.old.admin_cap() is not None
    with pytest.raises(InvalidArgument):
        up.old.create_admin_cap(up.server)


# -- Move and LocalLedger check the same objects, first ------------------------------------


def _move_function_body(module: str, function: str) -> tuple[str, str]:
    """(parameters, body) of ``module::function`` in move/dtp/sources."""
    text = (MOVE_SOURCES / f"{module}.move").read_text()
    match = re.search(r"\n(?:public |entry )+fun " + function + r"\(", text)
    assert match, (module, function)
    depth, i = 1, match.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    params = text[match.end() : i - 1]
    body = text[text.index("{", i) + 1 :]
    return params, body


def test_every_entry_function_checks_the_versions_of_its_objects_first() -> None:
    # LocalLedger checks every versioned object argument of every entry function (its
    # schema), in order, before the rule; the Move function's first lines must be the
    # same checks, of the same parameters, in the same order
    checked = 0
    for (module, function), (schema, _) in FUNCTIONS.items():
        structs = [kind[4:] for kind in schema if kind.startswith("obj:")]
        if (module, function) in MIGRATIONS or not set(structs) & VERSIONED:
            continue
        params, body = _move_function_body(module, function)
        names = re.findall(r"(\w+):\s*(?:&mut |&)?(\w+)\b", params)
        expected = [name for name, struct in names if struct in VERSIONED]
        assert [s for s in structs if s in VERSIONED] == [
            struct for _, struct in names if struct in VERSIONED
        ], (module, function)
        lines = [line.strip() for line in body.strip().splitlines()[: len(expected)]]
        calls = [re.fullmatch(r"(\w+)\.check_(?:\w+_)?version\(\);", line) for line in lines]
        assert [c.group(1) if c else None for c in calls] == expected, (module, function)
        checked += 1
    assert checked >= 60


def test_each_migration_takes_the_admin_cap_and_no_version_check() -> None:
    for struct, (module, function) in MIGRATE.items():
        params, body = _move_function_body(module, function)
        assert re.search(r"_: &AdminCap, \w+: &mut " + struct + r"\b", params), struct
        assert "check_" not in body.split("\n}", 1)[0], struct
