"""The firewall's allow and deny lists as Tables (docs/escrow.md §2): on LocalLedger and
on SuiLedger over the node stand-in, which serves each entry as a dynamic field of its
Table, as a node does.

A Host carries only the lists' sizes; whether a client is listed is one lookup
(``is_allowed``/``is_denied``: on Sui a GetObject of the entry's derived ID), and
``permits`` looks up only the lists that can decide. The lists stay bounded
(``EFirewallListFull``), idempotent, and the deny list wins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import FirewallDenied, HostConfigError, InvalidArgument, ObjectNotFound
from dtp.hostid._admission import LedgerAdmission
from dtp.hostid._connect import resolve_service
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import MAX_FIREWALL_ENTRIES, FirewallMode, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui._client import MalformedResponse, NodeObject, SuiNode
from dtp.ledger.sui._codec import address_field_id, host_tables
from dtp.testing.sui_node import SuiNodeStandIn
from dtp.transport._hooks import PeerInfo
from tests.ledger.files import damage
from tests.support.recording_sui_node import DIGEST, HOST, FakeNode


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT, MALLORY = ident(0x51), ident(0x52), ident(0x53)
PORT = 7
SLA = Sla(10, 5, 1000)


def address(n: int) -> str:
    return f"0x{n:064x}"


@dataclass
class World:
    """A Host with one service on a ledger, the client funded with a cap."""

    ledger: Ledger
    host: str
    cap: str
    node: SuiNodeStandIn | None = None

    def fresh(self) -> Any:
        return self.ledger.get_host(self.host)


@pytest.fixture(params=["local", "sui"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "local":
        local = LocalLedger(tmp_path / "ledger.db", clock_ms=0)
        for who in (SERVER, CLIENT, MALLORY):
            local.faucet(who.sui_address, 10**9)
        host = local.create_host(SERVER, SERVER.noise_public, ["tcp://127.0.0.1:7000"])
        local.add_service(SERVER, host, PORT, "raw", SLA)
        yield World(local, host, local.create_spending_cap(CLIENT, 10**6))
        local.close()
        return
    with SuiNodeStandIn(clock_ms=0) as node:
        for who in (SERVER, CLIENT, MALLORY):
            node.faucet(who.sui_address, 10**12)
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        host = sui.create_host(SERVER, SERVER.noise_public, ["tcp://127.0.0.1:7000"])
        sui.add_service(SERVER, host, PORT, "raw", SLA)
        yield World(sui, host, sui.create_spending_cap(CLIENT, 10**6), node)
        sui.close()


def lists(w: World) -> tuple[int, int, tuple[str, ...], tuple[str, ...]]:
    fw = w.fresh().firewall
    return (
        fw.allow_count,
        fw.deny_count,
        w.ledger.firewall_list(w.host, "allow"),
        w.ledger.firewall_list(w.host, "deny"),
    )


# -- the rules, on both ledgers --------------------------------------------------------------


def test_lists_are_idempotent_and_counted_after_every_change(world: World) -> None:
    led, h, c = world.ledger, world.host, CLIENT.sui_address
    assert lists(world) == (0, 0, (), ())
    led.allow(SERVER, h, c)
    assert lists(world) == (1, 0, (c,), ())
    led.allow(SERVER, h, c)  # already there: a no-op
    assert lists(world) == (1, 0, (c,), ())
    led.allow(SERVER, h, MALLORY.sui_address)
    assert lists(world)[:2] == (2, 0)
    led.disallow(SERVER, h, c)
    assert lists(world) == (1, 0, (MALLORY.sui_address,), ())
    led.disallow(SERVER, h, c)  # not there: a no-op
    assert lists(world)[:2] == (1, 0)
    led.deny(SERVER, h, c)
    led.deny(SERVER, h, c)
    assert lists(world) == (1, 1, (MALLORY.sui_address,), (c,))
    assert led.is_denied(h, c) and not led.is_allowed(h, c)
    assert led.is_allowed(h, MALLORY.sui_address) and not led.is_denied(h, MALLORY.sui_address)
    led.undeny(SERVER, h, c)
    led.undeny(SERVER, h, c)
    assert lists(world) == (1, 0, (MALLORY.sui_address,), ())
    assert not led.is_denied(h, c)


def test_deny_wins_in_both_modes_and_permits_agrees_with_open(world: World) -> None:
    led, h, c, m = world.ledger, world.host, CLIENT.sui_address, MALLORY.sui_address
    assert led.permits(world.fresh(), c) and led.refused(world.fresh(), {c, m}) == frozenset()
    led.deny(SERVER, h, c)
    assert not led.permits(world.fresh(), c) and led.permits(world.fresh(), m)
    with pytest.raises(FirewallDenied):
        led.open_connection(CLIENT, h, PORT, world.cap, 1000)
    led.set_firewall_mode(SERVER, h, int(FirewallMode.ALLOW_LISTED))
    # allow-listed with an empty allow list: nobody, and no list needs a lookup for m
    assert led.refused(world.fresh(), {c, m}) == {c, m}
    led.allow(SERVER, h, c)
    led.allow(SERVER, h, m)
    host = world.fresh()
    assert led.refused(host, {c, m}) == {c}  # on both lists: the deny list wins
    led.undeny(SERVER, h, c)
    assert led.permits(world.fresh(), c)
    opened = led.open_connection(CLIENT, h, PORT, world.cap, 1000)
    assert led.get_connection(opened.connection_id).client == c
    led.disallow(SERVER, h, c)
    assert not led.permits(world.fresh(), c)
    with pytest.raises(FirewallDenied):
        led.open_connection(CLIENT, h, PORT, world.cap, 1000)


def test_bad_arguments_and_objects_are_typed_errors(world: World) -> None:
    led, h = world.ledger, world.host
    with pytest.raises(InvalidArgument):
        led.firewall_list(h, "block")
    with pytest.raises(ObjectNotFound):
        led.is_denied(address(0xDEAD), CLIENT.sui_address)
    with pytest.raises(ObjectNotFound):
        led.firewall_list(world.cap, "allow")  # a SpendingCap, not a Host
    with pytest.raises(Exception, match="address") as bad:
        led.is_allowed(h, "mallory")
    assert type(bad.value).__name__ == "InvalidObjectId"


def test_admission_and_resolve_refuse_a_denied_client(world: World) -> None:
    """The host's admission and the client's pre-check read the lists as the chain does."""
    led, h = world.ledger, world.host
    opened = led.open_connection(CLIENT, h, PORT, world.cap, 1000)
    admission = LedgerAdmission(led, h, PORT)
    peer = PeerInfo(address=CLIENT.sui_address, connection_id=opened.connection_id, port=PORT)
    assert admission(peer) is None
    assert resolve_service(led, h, PORT, CLIENT.sui_address, 1000).endpoint is not None
    led.deny(SERVER, h, CLIENT.sui_address)
    assert admission(peer) == "the host's firewall denies this client"
    with pytest.raises(FirewallDenied):
        resolve_service(led, h, PORT, CLIENT.sui_address, 1000)
    led.undeny(SERVER, h, CLIENT.sui_address)
    led.set_firewall_mode(SERVER, h, int(FirewallMode.ALLOW_LISTED))
    assert admission(peer) == "the host's firewall denies this client"
    led.allow(SERVER, h, CLIENT.sui_address)
    assert admission(peer) is None


def test_a_full_list_takes_no_new_address_but_its_own(world: World) -> None:
    led, h = world.ledger, world.host
    for n in range(1, MAX_FIREWALL_ENTRIES + 1):
        led.deny(SERVER, h, address(n))
    assert world.fresh().firewall.deny_count == MAX_FIREWALL_ENTRIES
    led.deny(SERVER, h, address(1))  # already there
    with pytest.raises(HostConfigError) as full:
        led.deny(SERVER, h, CLIENT.sui_address)
    assert full.value.name == "EFirewallListFull"
    assert not led.is_denied(h, CLIENT.sui_address)
    led.undeny(SERVER, h, address(1))
    led.deny(SERVER, h, CLIENT.sui_address)  # room again
    denied = led.firewall_list(h, "deny")  # more than one page of ListDynamicFields on Sui
    assert len(denied) == MAX_FIREWALL_ENTRIES and address(1) not in denied
    assert led.refused(world.fresh(), {CLIENT.sui_address, address(2), address(1)}) == {
        CLIENT.sui_address,
        address(2),
    }
    # the allow list has its own room
    led.allow(SERVER, h, CLIENT.sui_address)
    assert world.fresh().firewall.allow_count == 1


# -- on Sui: the entries are dynamic fields, one GetObject each -------------------------------


@pytest.fixture
def sui_world(tmp_path: Path) -> Iterator[World]:
    with SuiNodeStandIn(clock_ms=0) as node:
        node.faucet(SERVER.sui_address, 10**12)
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        host = sui.create_host(SERVER, SERVER.noise_public)
        yield World(sui, host, "", node)
        sui.close()


def test_the_stand_in_serves_each_entry_as_a_dynamic_field(sui_world: World) -> None:
    led, h, node = sui_world.ledger, sui_world.host, sui_world.node
    assert node is not None
    reader = SuiNode(node.url, timeout=30.0)
    try:
        before = reader.get_object(h)
        allow, deny = host_tables(before.contents)
        led.deny(SERVER, h, CLIENT.sui_address)
        led.deny(SERVER, h, MALLORY.sui_address)
        after = reader.get_object(h)
        # the Host keeps its size: the entries are objects of their own
        assert len(after.contents) == len(before.contents)
        assert host_tables(after.contents) == (allow, deny)
        field = address_field_id(deny, CLIENT.sui_address)
        entry = reader.get_object(field)
        assert entry.type.endswith("::dynamic_field::Field<address, bool>")
        assert entry.owner == "object"
        assert entry.contents == bytes.fromhex(field[2:] + CLIENT.sui_address[2:] + "01")
        assert sorted(reader.table_keys(deny)) == sorted([CLIENT.sui_address, MALLORY.sui_address])
        assert reader.table_keys(allow) == []
        led.undeny(SERVER, h, CLIENT.sui_address)
        with pytest.raises(ObjectNotFound):
            reader.get_object(field)  # the entry's object is deleted with the entry
    finally:
        reader.close()


def test_a_change_rewrites_its_own_entry_only(sui_world: World) -> None:
    """A call on a Host writes the entry it changes (created or deleted with it), not
    the list: the other entries keep their versions, and after any mix of changes the
    node's entries are exactly the lists, each ``Field { id, name: address, value: true }``
    owned by its table."""
    led, h, node = sui_world.ledger, sui_world.host, sui_world.node
    assert node is not None
    host = node.state.object(h)
    assert host is not None
    allow, deny = host_tables(host.contents)

    def entries() -> dict[str, tuple[str, int, bytes]]:
        return {
            row.id: (row.owner, row.version, row.contents)
            for table in (allow, deny)
            for row in node.state.fields(table, "", 10_000)
        }

    for n in range(1, 9):
        led.deny(SERVER, h, address(n))
    led.allow(SERVER, h, address(1))  # on both lists
    before = entries()
    led.undeny(SERVER, h, address(3))
    led.deny(SERVER, h, address(2))  # listed already: nothing to write
    led.allow(SERVER, h, address(9))
    led.disallow(SERVER, h, address(1))
    led.allow(SERVER, h, address(4))
    after = entries()
    lists = {deny: [1, 2, 4, 5, 6, 7, 8], allow: [9, 4]}
    expected = {
        address_field_id(table, address(n)): (table, address(n))
        for table, ns in lists.items()
        for n in ns
    }
    assert set(after) == set(expected)
    for field, (table, client) in expected.items():
        owner, version, contents = after[field]
        assert owner == table
        assert contents == bytes.fromhex(field[2:] + client[2:] + "01")
        if field in before:
            assert version == before[field][1]  # not rewritten
        else:
            assert version > max(v for _, v, _ in before.values())


def test_a_lookup_reads_the_entry_only(sui_world: World) -> None:
    """A SuiLedger that has read the Host decides with one GetObject per list looked up,
    whatever the list's length; an allow-all firewall with an empty deny list needs none."""
    led, h = sui_world.ledger, sui_world.host
    assert isinstance(led, SuiLedger)
    host = led.get_host(h)
    calls: list[str] = []
    real = led._node.get_object

    def counted(object_id: str, **kwargs: Any) -> NodeObject:
        calls.append(object_id)
        return real(object_id, **kwargs)

    led._node.get_object = counted  # type: ignore[method-assign]
    assert led.permits(host, CLIENT.sui_address) and calls == []
    for n in range(1, 40):
        led.deny(SERVER, h, address(n))
    host = led.get_host(h)
    calls.clear()
    assert not led.permits(host, address(7))
    assert led.permits(host, CLIENT.sui_address)
    _, deny = host_tables(real(h).contents)
    assert calls == [address_field_id(deny, address(7)), address_field_id(deny, CLIENT.sui_address)]


def test_an_entry_that_is_not_the_lists_is_a_malformed_answer() -> None:
    """A node answering the derived ID with another object (not a Field<address, bool>
    naming the client) is not believed: the lookup fails typed, it does not say listed."""
    ledger = SuiLedger(SuiConfig("http://127.0.0.1:1", "0x" + "d7" * 32))
    node = FakeNode()
    ledger._node = node  # type: ignore[assignment]
    allow, _deny = host_tables(node.objects[HOST].contents)
    field = address_field_id(allow, CLIENT.sui_address)
    node.objects[field] = NodeObject(
        field, 4, DIGEST, "object", None, "0x2::coin::Coin<0x2::sui::SUI>", bytes(40)
    )
    with pytest.raises(MalformedResponse):
        ledger.is_allowed(HOST, CLIENT.sui_address)
    good = bytes.fromhex(field[2:] + CLIENT.sui_address[2:] + "01")
    node.objects[field] = NodeObject(
        field, 4, DIGEST, "object", None, "0x2::dynamic_field::Field<address, bool>", good
    )
    assert ledger.is_allowed(HOST, CLIENT.sui_address)
    assert not ledger.is_allowed(HOST, MALLORY.sui_address)  # no such object: not listed
    node.objects[field] = NodeObject(
        field, 4, DIGEST, "object", None, "0x2::dynamic_field::Field<address, bool>", good[:-1]
    )
    with pytest.raises(MalformedResponse):
        ledger.is_allowed(HOST, CLIENT.sui_address)


def test_field_ids_are_derived_as_the_sui_sdk_derives_them() -> None:
    """Vectors from @mysten/sui 1.45.2 (``deriveDynamicFieldID(parent, 'address',
    bcs.Address.serialize(key).toBytes())``), made with node outside this repository."""
    client = "0x0881c07520943bbf13989b92892093c1b50672156fa5f873c22892701cb2e207"
    assert address_field_id("0x" + "77" * 32, client) == (
        "0xd35cf9d7f6a6b399eb5f15ea4cfb1ce0601e98dd50346279237fbc81abc08c98"
    )
    assert address_field_id("0x2", "0x3") == (
        "0x229d26982c81b750b1ddf47bd214710f02d1addc4bea8d2fbe5fe7cce959f27a"
    )


# -- LocalLedger: a file from before the lists were Tables ----------------------------------


def test_a_ledger_file_with_lists_of_addresses_reads_and_changes_them(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = LocalLedger(path)
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.close()
    # as a file written when the lists were VecSets (JSON lists of addresses)
    old = json.dumps([CLIENT.sui_address, address(5)])
    damage(
        path,
        "UPDATE objects SET data = json_set(data, '$.firewall.deny', json(?)) WHERE id = ?",
        old,
        host,
    )
    ledger = LocalLedger(path)
    try:
        assert ledger.get_host(host).firewall.deny_count == 2
        assert ledger.is_denied(host, CLIENT.sui_address)
        assert not ledger.permits(ledger.get_host(host), CLIENT.sui_address)
        ledger.undeny(SERVER, host, CLIENT.sui_address)  # written back as a Table's entries
        assert ledger.firewall_list(host, "deny") == (address(5),)
        ledger.deny(SERVER, host, MALLORY.sui_address)
        assert ledger.get_host(host).firewall.deny_count == 2
    finally:
        ledger.close()
