"""The Sui node stand-in itself (dtp/testing/sui_node): objects as a node shows them (Lamport
versions, digests, owners, full types, BCS contents, dynamic fields), the checks a node
makes before executing, the mapping of PTB commands onto the rules, gas, events with
watermarks, and the knobs (latency, rate limits, contention, outages, clock and epochs,
a process of its own with its state in a directory)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.errors import (
    ChainError,
    InsufficientFunds,
    InvalidArgument,
    InvalidTransaction,
    ObjectNotFound,
    WrongSigner,
    move_error_from_abort_code,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger, rules
from dtp.ledger.local._tx import tx_digest
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._client import LedgerUnavailable, SuiNode
from dtp.ledger.sui._codec import decode_object, decode_service, port_field_id, table_id
from dtp.ledger.sui._tx import GasData, SharedRef, TxContext
from dtp.testing.sui_node import SuiNodeStandIn
from dtp.testing.sui_node._execute import gas_rates
from dtp.testing.sui_node._objects import COIN_TYPE
from tests.support.paths import ROOT
from tests.support.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
FUNDS = 10**10
KINDS = sui_prot.ExecutionErrorExecutionErrorKind


@pytest.fixture
def node() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn(clock_ms=1_000) as stand_in:
        yield stand_in
        stand_in.state.check()


@pytest.fixture
def client(node: SuiNodeStandIn) -> Iterator[SuiNode]:
    raw = SuiNode(node.url, timeout=30.0, retries=0)
    yield raw
    raw.close()


@pytest.fixture
def ledger(node: SuiNodeStandIn) -> Iterator[SuiLedger]:
    sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
    yield sui
    sui.close()


def funded(node: SuiNodeStandIn, mist: int = FUNDS) -> HostIdentity:
    identity = HostIdentity.generate()
    node.faucet(identity.sui_address, mist)
    return identity


def ctx_for(client: SuiNode, node: SuiNodeStandIn, signer: HostIdentity, **gas: Any) -> TxContext:
    """Gas data naming the signer's largest coin at its current version."""
    coin = client.gas_coins(signer.sui_address)[0][0]
    data = GasData(
        gas.get("payment", (coin,)), gas.get("price", 1000), gas.get("budget", 50_000_000)
    )
    return TxContext(node.package_id, signer.sui_address, data)


def send(client: SuiNode, signer: HostIdentity, tx_bytes: bytes) -> Any:
    return client.execute(tx_bytes, signer.sign_transaction(tx_bytes))


# -- objects --------------------------------------------------------------------------------------


def test_versions_are_lamport_and_digests_follow_the_object(
    node: SuiNodeStandIn, client: SuiNode, ledger: SuiLedger
) -> None:
    server = funded(node)
    host = ledger.create_host(server, server.noise_public, ["tcp://127.0.0.1:7000"])
    created = client.get_object(host)
    assert created.owner == "shared" and created.initial_shared_version == created.version
    ledger.add_service(server, host, 7, "raw", SLA)
    changed = client.get_object(host)
    assert changed.version > created.version and changed.digest != created.digest
    effects = client.get_object(host)  # unchanged by a read
    assert (effects.version, effects.digest) == (changed.version, changed.digest)
    coin = client.gas_coins(server.sui_address)[0][0]
    assert coin.version == changed.version  # one version for all a transaction writes
    # a mutable input left unchanged is still written at the new version
    ledger.set_firewall_mode(server, host, 0)
    same = client.get_object(host)
    assert same.contents == changed.contents
    assert same.version > changed.version and same.digest != changed.digest
    assert same.initial_shared_version == created.initial_shared_version


def test_objects_have_full_types_owners_and_bcs_contents(
    node: SuiNodeStandIn, client: SuiNode, ledger: SuiLedger
) -> None:
    server, user = funded(node), funded(node)
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7, "raw", SLA)
    cap = ledger.create_spending_cap(user, 10**6)
    before_open = client.get_object(host)
    opened = ledger.open_connection(user, host, 7, cap, 5000)
    pipe = ledger.create_pipe(user, opened.connection_id, 2)
    obj = client.get_object(host)
    assert obj.type == f"{node.package_id}::host::Host"
    host_view = decode_object("Host", obj.version, obj.contents, {})
    assert host_view.services == {}  # a Table: the Host holds its ID and size
    # each service is a dynamic field of the services Table, found by its derived ID
    services = table_id("Host", obj.contents)
    assert services is not None
    entry = client.get_object(port_field_id(services, 7))
    assert entry.type == (
        f"0x{'0' * 63}2::dynamic_field::Field<u16, {node.package_id}::host::Service>"
    )
    assert entry.owner == "object"
    assert entry.contents[:34] == bytes.fromhex(port_field_id(services, 7)[2:]) + b"\x07\x00"
    fields = client.table_fields(services, 2)
    assert list(fields) == [b"\x07\x00"] and fields[b"\x07\x00"] == entry.contents[34:]
    entries = {7: decode_service(fields[b"\x07\x00"])}
    host_view = decode_object("Host", obj.version, obj.contents, entries)
    assert host_view.services[7].sla == SLA
    assert ledger.get_host(host).services == host_view.services
    assert ledger.get_service(host, 7) == host_view.services[7]
    assert ledger.get_service(host, 8) is None
    # an open takes the Host read-only (docs/escrow.md §19): its version does not move,
    # while the client's cap, taken mutably, holds the reserved deposit
    assert (obj.version, obj.digest) == (before_open.version, before_open.digest)
    assert ledger.get_cap(cap).outstanding == 5000
    owned = client.get_object(pipe)
    assert owned.owner == user.sui_address and owned.initial_shared_version is None
    coin_ref, balance = client.gas_coins(user.sui_address)[0]
    coin = client.get_object(coin_ref.object_id)
    assert coin.type == COIN_TYPE and coin.owner == user.sui_address
    assert coin.contents == bytes.fromhex(coin_ref.object_id[2:]) + balance.to_bytes(8, "little")
    # a broadcast's Table<address, u64> entries are dynamic fields of the table's UID
    station = ledger.create_broadcast(server, "news", 10, 1_000)
    ledger.broadcast_contribute(user, station, 300)
    assert ledger.get_broadcast(station).contributions == {user.sui_address: 300}
    with pytest.raises(ObjectNotFound):
        client.get_object("0x" + "ee" * 32)


def test_the_clock_object_reads_the_stand_in_clock(node: SuiNodeStandIn, ledger: SuiLedger) -> None:
    assert ledger.clock_ms() == 1_000
    node.advance_clock(2_500)
    assert ledger.clock_ms() == 3_500
    node.set_clock(10_000)
    assert ledger.clock_ms() == 10_000


def test_faucet_coins_and_balances(node: SuiNodeStandIn, client: SuiNode) -> None:
    who = funded(node, 500)
    node.faucet(who.sui_address, 700)
    assert sorted(b for _, b in client.gas_coins(who.sui_address)) == [500, 700]
    assert client.balance(who.sui_address) == 1200
    assert client.balance("0x" + "77" * 32) == 0


# -- checks before execution ---------------------------------------------------------------------


def test_gas_budget_price_and_coins_are_checked_before_execution(
    node: SuiNodeStandIn, client: SuiNode
) -> None:
    signer = funded(node, 60_000_000)
    cases: list[tuple[dict[str, Any], type[ChainError], str]] = [
        ({"budget": 999_999}, InvalidTransaction, "lower than min"),
        ({"price": 999}, InvalidTransaction, "under reference gas price"),
        ({"budget": 70_000_000}, InsufficientFunds, "lower than the needed amount"),
    ]
    for gas, error, text in cases:
        tx = sui_tx.create_spending_cap(ctx_for(client, node, signer, **gas), 5)
        with pytest.raises(error, match=text):
            send(client, signer, tx)
    assert node.calls["ExecuteTransaction"] == 3 and node.state.gas_paid() == 0
    stale = ctx_for(client, node, signer)
    send(client, signer, sui_tx.create_spending_cap(stale, 5))
    with pytest.raises(InvalidTransaction, match="not available for consumption"):
        send(client, signer, sui_tx.create_spending_cap(stale, 6))


def test_signatures_are_checked(node: SuiNodeStandIn, client: SuiNode) -> None:
    signer, other = funded(node), HostIdentity.generate()
    tx = sui_tx.create_spending_cap(ctx_for(client, node, signer), 5)
    with pytest.raises(WrongSigner, match="signature"):
        client.execute(tx, other.sign_transaction(tx))
    bad = bytearray(signer.sign_transaction(tx))
    bad[5] ^= 1
    with pytest.raises(WrongSigner, match="signature"):
        client.execute(tx, bytes(bad))
    assert node.state.gas_paid() == 0


def test_an_owned_object_of_another_address_is_refused(
    node: SuiNodeStandIn, client: SuiNode, ledger: SuiLedger
) -> None:
    server, user, thief = funded(node), funded(node), funded(node)
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7, "raw", SLA)
    cap = ledger.create_spending_cap(user, 10**6)
    opened = ledger.open_connection(user, host, 7, cap, 5000)
    pipe = client.get_object(ledger.create_pipe(user, opened.connection_id, 1)).owned_ref()
    tx = sui_tx.pipe_send(ctx_for(client, node, thief), pipe, 0, b"x")
    with pytest.raises(WrongSigner, match="owned by account address"):
        send(client, thief, tx)


def test_executing_a_transaction_again_returns_its_effects(
    node: SuiNodeStandIn, client: SuiNode
) -> None:
    signer = funded(node)
    tx = sui_tx.create_spending_cap(ctx_for(client, node, signer), 5)
    signature = signer.sign_transaction(tx)
    first = client.execute(tx, signature)
    again = client.execute(tx, signature)
    assert first.digest == again.digest and bytes(first.effects) == bytes(again.effects)
    # the record kept (the answer with its checkpoint and time appended) is the message's
    # own encoding, as if it were parsed, completed and encoded again
    found = node.state.transaction(first.digest)
    assert found is not None
    seq, kept = found
    stored = sui_prot.ExecutedTransaction.parse(kept)
    assert bytes(stored) == kept
    assert stored.checkpoint == seq and bytes(stored.effects) == bytes(first.effects)
    checkpoint = node.state.checkpoint(seq)
    assert checkpoint is not None and stored.timestamp is not None
    assert stored.timestamp.timestamp() * 1000 == checkpoint[2]
    assert node.state.gas_paid(signer.sui_address) == (
        first.effects.gas_used.computation_cost
        + first.effects.gas_used.storage_cost
        - first.effects.gas_used.storage_rebate
    )


def test_equivocating_transactions_are_refused(node: SuiNodeStandIn, client: SuiNode) -> None:
    """Two different transactions with one gas coin in flight together: the second is
    refused (the coin is locked for the first), the first executes."""
    node.tx_latency = 0.5
    signer = funded(node)
    ctx = ctx_for(client, node, signer)
    first = sui_tx.create_spending_cap(ctx, 1)
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(send(client, signer, first)))
    thread.start()
    while node.peak_in_flight[signer.sui_address] == 0:
        time.sleep(0.01)
    with pytest.raises(InvalidTransaction, match="ObjectLockConflict"):
        send(client, signer, sui_tx.create_spending_cap(ctx, 2))
    thread.join(30)
    assert outcome and outcome[0].effects.status.success
    assert node.lock_conflicts == 1


# -- execution -----------------------------------------------------------------------------------


def test_gas_is_charged_as_the_effects_report(node: SuiNodeStandIn, client: SuiNode) -> None:
    signer = funded(node)
    executed = send(client, signer, sui_tx.create_spending_cap(ctx_for(client, node, signer), 5))
    gas = executed.effects.gas_used
    rates = gas_rates()
    assert gas.computation_cost == 1000 * rates["units_per_command"]
    # the cap and the gas coin written, the gas coin's old storage refunded at 99%
    assert gas.storage_cost > 0 and gas.storage_rebate == 0  # a faucet coin paid no storage
    net = gas.computation_cost + gas.storage_cost - gas.storage_rebate
    assert client.balance(signer.sui_address) == FUNDS - net
    executed = send(client, signer, sui_tx.create_spending_cap(ctx_for(client, node, signer), 6))
    gas = executed.effects.gas_used
    coin_storage = (40 + rates["object_overhead"]) * 100 * 76
    assert gas.storage_rebate == coin_storage * rates["rebate_bps"] // 10_000
    assert gas.non_refundable_storage_fee == coin_storage - gas.storage_rebate
    audit = node.audit()
    assert audit["minted"] == audit["balances"] + audit["gas"]


def test_move_aborts_carry_clever_codes_and_still_charge_gas(
    node: SuiNodeStandIn, client: SuiNode, ledger: SuiLedger
) -> None:
    owner, stranger = funded(node), funded(node)
    cap = ledger.create_spending_cap(owner, 5)
    before = client.get_object(cap)
    ref = SharedRef(cap, before.initial_shared_version or 0)
    tx = sui_tx.set_max_per_epoch(ctx_for(client, node, stranger), ref, 9)
    executed = send(client, stranger, tx)
    status = executed.effects.status
    assert not status.success and status.error.kind == KINDS.MOVE_ABORT
    abort = status.error.abort
    assert abort.location.package == node.package_id and abort.location.module == "spending_cap"
    assert abort.clever_error.constant_name == "ENotCapOwner"
    error = move_error_from_abort_code(abort.abort_code)
    assert error.qualified_name == "spending_cap::ENotCapOwner"
    assert executed.events is None
    after = client.get_object(cap)
    assert after.contents == before.contents and after.version > before.version
    assert node.gas_paid(stranger.sui_address) > 0
    with pytest.raises(ChainError) as info:
        ledger.set_max_per_epoch(stranger, cap, 9)
    assert info.value.qualified_name == "spending_cap::ENotCapOwner"


def _custom(client: SuiNode, node: SuiNodeStandIn, signer: HostIdentity, make: Any) -> Any:
    tx = sui_tx._Tx(ctx_for(client, node, signer))
    make(tx)
    return send(client, signer, tx.finish())


def test_the_call_mapping_follows_the_rule_table(
    node: SuiNodeStandIn, client: SuiNode, ledger: SuiLedger
) -> None:
    """Commands are mapped generically from local_rules.FUNCTIONS: wrong arity, a value of
    the wrong kind, an unknown function, a coin left unused and an object changed through
    an immutable reference fail as Sui fails them (gas charged, nothing else changed)."""
    owner = funded(node)
    cap_id = ledger.create_spending_cap(owner, 5)
    cap = SharedRef(cap_id, client.get_object(cap_id).initial_shared_version or 0)
    u64 = sui_tx.encode_u64

    def errors(make: Any) -> Any:
        return _custom(client, node, owner, make).effects.status.error

    error = errors(
        lambda t: t.call("spending_cap", "set_max_per_epoch", [t.shared(cap, mutable=True)])
    )
    assert error.kind == KINDS.ARITY_MISMATCH
    error = errors(
        lambda t: t.call(
            "spending_cap", "set_max_per_epoch", [t.shared(cap, mutable=True), t.pure(b"\x01")]
        )
    )
    assert error.kind == KINDS.COMMAND_ARGUMENT_ERROR
    assert error.command_argument_error.kind.name == "INVALID_BCS_BYTES"
    error = errors(lambda t: t.call("spending_cap", "burn", []))
    assert error.kind == KINDS.FUNCTION_NOT_FOUND
    error = errors(lambda t: t.coin(5, "an unused coin"))
    assert error.kind == KINDS.UNUSED_VALUE_WITHOUT_DROP
    error = errors(
        lambda t: t.call(
            "spending_cap", "set_max_per_epoch", [t.shared(cap, mutable=False), t.pure(u64(9))]
        )
    )
    assert error.command_argument_error.kind.name == "INVALID_OBJECT_BY_MUT_REF"
    assert ledger.get_cap(cap_id).max_per_epoch == 5
    # and the same call with the cap mutable goes through
    executed = _custom(
        client,
        node,
        owner,
        lambda t: t.call(
            "spending_cap", "set_max_per_epoch", [t.shared(cap, mutable=True), t.pure(u64(9))]
        ),
    )
    assert executed.effects.status.success and ledger.get_cap(cap_id).max_per_epoch == 9


def test_split_coins_transferred_become_coins_of_the_recipient(
    node: SuiNodeStandIn, client: SuiNode
) -> None:
    from dtp.ledger.sui._gas import split_transaction

    signer = funded(node)
    executed = send(client, signer, split_transaction(ctx_for(client, node, signer), [10**9] * 3))
    assert executed.effects.status.success
    balances = sorted(b for _, b in client.gas_coins(signer.sui_address))
    assert balances[:3] == [10**9] * 3 and sum(balances) == client.balance(signer.sui_address)


# -- events --------------------------------------------------------------------------------------


def test_events_stream_with_watermarks_and_end_reasons(
    node: SuiNodeStandIn, client: SuiNode, ledger: SuiLedger
) -> None:
    owner = funded(node)
    for limit in (1, 2, 3):
        ledger.create_spending_cap(owner, limit)
    reasons = sui_prot.QueryEndReason
    page = client.scan_events(node.package_id, None, 1)
    assert len(page.frames) == 1 and page.end == reasons.ITEM_LIMIT
    rest = client.scan_events(node.package_id, page.last, 10)
    assert len(rest.frames) == 2 and rest.end == reasons.LEDGER_TIP
    assert rest.last is not None and page.last is not None and rest.last > page.last
    empty = client.scan_events(node.package_id, rest.last, 10)
    assert empty.frames == [] and empty.end == reasons.LEDGER_TIP and empty.last == rest.last
    other = client.scan_events("0x" + "ab" * 32, None, 10)
    assert other.frames == [] and other.end == reasons.LEDGER_TIP
    events, cursor = ledger.events(None)
    assert [e["max_per_epoch"] for e in events] == [1, 2, 3] and cursor == rest.last.hex()
    node.scan_limit = 1  # a node's per-request budget: the reader resumes from the frontier
    assert ledger.head_cursor() == rest.last.hex()
    with pytest.raises(InvalidArgument):
        ledger.events("not hex")
    with pytest.raises(ChainError, match="INVALID_ARGUMENT"):
        ledger.events("00ff")  # hex, but no cursor of this node


# -- knobs ---------------------------------------------------------------------------------------


def test_epochs_end_with_the_clock_and_on_demand(ledger: SuiLedger) -> None:
    with SuiNodeStandIn(clock_ms=0, epoch_ms=1_000) as node:
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            assert sui.epoch() == 0
            node.advance_clock(2_500)
            assert sui.epoch() == 2
            assert node.advance_epoch() == 3 and sui.epoch() == 3
            node.epoch_without_price = True  # the price then comes from the system state
            assert sui._node.epoch_info() == (3, 1000)
        finally:
            sui.close()


def test_a_transaction_in_flight_does_not_hold_up_reads(
    node: SuiNodeStandIn, client: SuiNode
) -> None:
    node.tx_latency = 1.0
    signer = funded(node)
    tx = sui_tx.create_spending_cap(ctx_for(client, node, signer), 5)
    thread = threading.Thread(target=lambda: send(client, signer, tx))
    thread.start()
    while node.peak_in_flight[signer.sui_address] == 0:
        time.sleep(0.01)
    assert client.balance(signer.sui_address) == FUNDS  # answered while it is in flight
    assert thread.is_alive()
    thread.join(30)
    assert client.balance(signer.sui_address) < FUNDS


def test_rate_limit_answers_resource_exhausted(node: SuiNodeStandIn, client: SuiNode) -> None:
    node.rate_limit = 2
    client.epoch_info()
    client.epoch_info()
    with pytest.raises(LedgerUnavailable, match="rate limiting"):
        client.epoch_info()


def test_stall_and_garble_knobs(node: SuiNodeStandIn) -> None:
    quick = SuiNode(node.url, timeout=0.5, retries=0)
    try:
        node.stall()
        with pytest.raises(LedgerUnavailable, match="did not answer"):
            quick.epoch_info()
        node.unstall()
        assert quick.epoch_info()[1] == 1000
        node.garble_next(1, "GetEpoch")
        with pytest.raises(ChainError, match="cannot be read"):
            quick.epoch_info()
    finally:
        quick.close()


def test_contention_cancels_a_transaction_writing_a_busy_shared_object(
    node: SuiNodeStandIn, client: SuiNode, ledger: SuiLedger
) -> None:
    a, b = funded(node), funded(node)
    cap_a, cap_b = ledger.create_spending_cap(a, 1), ledger.create_spending_cap(a, 2)
    ref = SharedRef(cap_a, client.get_object(cap_a).initial_shared_version or 0)
    # (both built before the first is sent; the second goes once the node holds the
    # first in flight, writing the cap -- a's earlier calls count in its peak_in_flight
    # already, so that is no cue -- and the first stays there 2 s)
    tx = sui_tx.set_max_per_epoch(ctx_for(client, node, a), ref, 7)
    tx_b = sui_tx.set_max_per_epoch(ctx_for(client, node, b), ref, 8)
    node.tx_latency, node.contention = 2.0, 1.0
    first: list[Any] = []
    thread = threading.Thread(target=lambda: first.append(send(client, a, tx)))
    thread.start()
    assert wait_for(lambda: node.writing(cap_a), 10)
    second = send(client, b, tx_b)
    thread.join(30)
    error = second.effects.status.error
    assert error.kind == KINDS.EXECUTION_CANCELED_DUE_TO_CONSENSUS_OBJECT_CONGESTION
    assert list(error.congested_objects.objects) == [cap_a]
    assert first[0].effects.status.success and ledger.get_cap(cap_a).max_per_epoch == 7
    assert ledger.get_cap(cap_b).max_per_epoch == 2
    assert node.gas_paid(b.sui_address) > 0  # a cancelled transaction still pays gas


def test_going_away_refuses_connections_and_coming_back_keeps_state(
    node: SuiNodeStandIn, ledger: SuiLedger
) -> None:
    owner = funded(node)
    cap = ledger.create_spending_cap(owner, 5)
    node.go_away()
    quick = SuiNode(node.url, timeout=5.0, retries=0)
    try:
        with pytest.raises(LedgerUnavailable, match="unreachable"):
            quick.epoch_info()
    finally:
        quick.close()
    node.come_back()
    assert ledger.get_cap(cap).max_per_epoch == 5


def test_index_lag_hides_new_objects_from_other_connections_for_a_while(
    node: SuiNodeStandIn, ledger: SuiLedger
) -> None:
    """With ``index_lag`` each client connection stands for a full node of its own: the
    one that executed a transaction reads what it created at once, another finds
    nothing until the lag has passed; objects that existed before are read everywhere."""
    owner = funded(node)
    older = ledger.create_spending_cap(owner, 1)
    node.index_lag = 0.5
    cap = ledger.create_spending_cap(owner, 5)
    elsewhere = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
    try:
        assert ledger.get_cap(cap).max_per_epoch == 5  # the node that executed it
        assert elsewhere.get_cap(older).max_per_epoch == 1
        with pytest.raises(ObjectNotFound):
            elsewhere.get_cap(cap)
        assert node.lagged_reads == 1
        time.sleep(0.5)
        assert elsewhere.get_cap(cap).max_per_epoch == 5
    finally:
        elsewhere.close()


def test_a_process_of_its_own_keeps_its_state_in_a_directory(tmp_path: Path) -> None:
    owner = HostIdentity.generate()

    def start() -> tuple[subprocess.Popen[str], str, str]:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "dtp.testing.sui_node", "--port", "0", "--state",
                str(tmp_path), "--clock-ms", "5000", "--print-url",
                "--fund", f"{owner.sui_address}=1000000000",
            ],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        url, package = proc.stdout.readline().split()
        return proc, url, package

    def stop(proc: subprocess.Popen[str]) -> None:
        proc.terminate()
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        proc.stdout.close()

    proc, url, package = start()
    try:
        sui = SuiLedger(SuiConfig(url, package, timeout=30.0))
        cap = sui.create_spending_cap(owner, 5)
        sui.close()
    finally:
        stop(proc)
    proc, url, package = start()  # funded again: a second coin
    try:
        sui = SuiLedger(SuiConfig(url, package, timeout=30.0, retries=0))
        assert sui.get_cap(cap).max_per_epoch == 5
        assert sui.clock_ms() == 5000  # the clock was kept, not set again
        assert len(sui._node.gas_coins(owner.sui_address)) == 2
        proc.send_signal(signal.SIGUSR1)  # go away ...
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                sui.epoch()
            except LedgerUnavailable:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the stand-in kept serving after SIGUSR1")
        proc.send_signal(signal.SIGUSR2)  # ... and come back
        while time.monotonic() < deadline:
            try:
                assert sui.get_cap(cap).max_per_epoch == 5
                break
            except LedgerUnavailable:
                time.sleep(0.05)
        else:
            pytest.fail("the stand-in did not come back after SIGUSR2")
        sui.close()
    finally:
        stop(proc)


# -- LocalLedger's entry point ------------------------------------------------------------------


def test_apply_verified_runs_a_digest_once_and_rolls_back_on_errors() -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    sender = "0x" + "0b" * 32
    digest = tx_digest(b"some transaction")
    result = ledger.apply_verified(sender, digest, lambda x: rules.cap_create(x, 9))
    (cap,) = result.created
    assert ledger.get_cap(cap).owner == sender and result.value == cap
    with pytest.raises(InvalidTransaction, match="already executed"):
        ledger.apply_verified(sender, digest, lambda x: rules.cap_create(x, 9))
    other = tx_digest(b"another one")
    with pytest.raises(ChainError):
        ledger.apply_verified(
            "0x" + "0c" * 32, other, lambda x: rules.cap_set_max_per_epoch(x, cap, 1)
        )
    assert ledger.get_cap(cap).max_per_epoch == 9
    with pytest.raises(InvalidTransaction):
        ledger.apply_verified(sender, b"short", lambda x: None)
    ledger.close()
