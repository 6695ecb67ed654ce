"""SuiLedger end to end on the Sui node stand-in (dtp/testing/sui_node): the shared ledger
scenarios, as on LocalLedger, with gas accounted; and what a real network does that
LocalLedger never does: transactions in flight side by side, congestion cancellations,
rate limiting, outages, answers that do not decode, gas running out."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.errors
from dtp.errors import InsufficientFunds, ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.sui import SharedObjectCongestion, SuiConfig, SuiLedger
from dtp.ledger.sui import _client as sui_client
from dtp.ledger.sui import _ledger as sui_core
from dtp.ledger.sui._client import MalformedResponse
from dtp.testing.sui_node import SuiNodeStandIn
from dtp.testing.sui_node._objects import COIN_TYPE
from tests.ledger.scenario_runner import ACTORS, SCENARIOS, Runner

#: MIST each actor gets for gas, apart from what a scenario funds.
GAS_ALLOWANCE = 10**10


class SuiWorld:
    """The scenarios on SuiLedger over a fresh stand-in (clock frozen at 0): every actor
    holds a gas allowance besides what the scenario gives it; balances are compared net
    of the gas the node charged."""

    def __init__(self, node: SuiNodeStandIn) -> None:
        self.node = node
        self.ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        self.allowances = 0
        for identity in ACTORS.values():
            node.faucet(identity.sui_address, GAS_ALLOWANCE)
            self.allowances += GAS_ALLOWANCE

    def fund(self, address: str, amount: int) -> None:
        self.node.faucet(address, amount)

    def set_clock(self, ms: int) -> None:
        self.node.set_clock(ms)

    def advance_clock(self, ms: int) -> None:
        self.node.advance_clock(ms)

    def next_epoch(self) -> None:
        self.node.advance_epoch()

    def balance(self, address: str) -> int:
        return self.ledger.balance(address) - GAS_ALLOWANCE + self.node.gas_paid(address)

    def assert_conserved(self, minted: int) -> None:
        audit = self.node.audit()
        assert audit["minted"] == minted + self.allowances
        held = audit["balances"] + audit["escrows"] + audit["broadcasts"] + audit["gas"]
        assert audit["minted"] == held

    def snapshot(self) -> Any:
        # a failed transaction charges gas (and records its digest): all else stays
        state = self.node.state
        dump = state.ledger.dump()
        dump["balances"] = sorted(
            (address, int(amount) + state.gas_paid(address)) for address, amount in dump["balances"]
        )
        del dump["transactions"]
        return dump


@pytest.fixture
def node() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn(clock_ms=0) as stand_in:
        yield stand_in


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scenario_on_sui(scenario: dict[str, Any], node: SuiNodeStandIn) -> None:
    world = SuiWorld(node)
    try:
        Runner(scenario, world).run()
    finally:
        world.ledger.close()
    node.state.check()


# -- Sui realities: concurrency, congestion, rate limits, outages, bad answers, gas --------------

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)


def _funded(node: SuiNodeStandIn, mist: int = 10**10) -> HostIdentity:
    identity = HostIdentity.generate()
    node.faucet(identity.sui_address, mist)
    return identity


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off as they do on a network, in milliseconds rather than seconds."""
    monkeypatch.setattr(sui_client, "_RETRY_DELAY", 0.001)
    monkeypatch.setattr(sui_client, "_RATE_LIMITED_DELAY", 0.001)
    monkeypatch.setattr(sui_core, "_CONGESTION_DELAY", 0.001)


@pytest.fixture
def ledger(node: SuiNodeStandIn) -> Iterator[SuiLedger]:
    sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
    yield sui
    sui.close()
    node.state.check()


def test_threads_sharing_a_ledger_run_transactions_side_by_side(node: SuiNodeStandIn) -> None:
    """One coin at first: the transactions that find it leased wait, one of them splits
    it, and from then on they run with a coin each: several in flight at once, none
    refused for a coin another holds, and every MIST accounted for."""
    node.tx_latency = 0.2
    signer = _funded(node)
    sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
    errors: list[BaseException] = []
    caps: list[str] = []

    def work() -> None:
        try:
            for _ in range(3):
                cap = sui.create_spending_cap(signer, 1000)
                caps.append(cap)
                # each thread sees the outcome of its own transaction
                outcome = sui.last_outcome
                assert outcome is not None and outcome.created_of("SpendingCap") == cap
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sui.close()
    assert errors == [] and len(set(caps)) == 15
    assert node.peak_in_flight[signer.sui_address] >= 2
    assert node.lock_conflicts == 0
    coins = node.state.owned(signer.sui_address, COIN_TYPE, "", 100)
    assert len(coins) > 1  # the balance was split into a pool of coins
    audit = node.audit()
    assert audit["minted"] == audit["balances"] + audit["gas"]
    node.state.check()


def test_a_cancelled_transaction_is_sent_again(node: SuiNodeStandIn, ledger: SuiLedger) -> None:
    """Congestion control cancelled it twice (gas charged, nothing else): SuiLedger sends
    it again and the third attempt executes."""
    client = _funded(node)
    cap = ledger.create_spending_cap(client, 1000)
    sent = node.calls["ExecuteTransaction"]
    gas_before = node.gas_paid(client.sui_address)
    node.cancel_next(2)
    ledger.set_max_per_epoch(client, cap, 5000)
    assert node.calls["ExecuteTransaction"] - sent == 3
    assert ledger.get_cap(cap).max_per_epoch == 5000
    outcome = ledger.last_outcome
    assert outcome is not None
    # three charges: two cancellations and the execution
    assert node.gas_paid(client.sui_address) - gas_before > outcome.gas_cost
    assert ledger.balance(client.sui_address) == 10**10 - node.gas_paid(client.sui_address)


def test_congestion_that_never_ends_is_a_typed_error(
    node: SuiNodeStandIn, ledger: SuiLedger
) -> None:
    client = _funded(node)
    cap = ledger.create_spending_cap(client, 1000)
    node.cancel_next(100)
    with pytest.raises(SharedObjectCongestion, match="did not execute") as info:
        ledger.set_max_per_epoch(client, cap, 5000)
    assert isinstance(info.value, dtp.errors.LedgerUnavailable)
    assert ledger.get_cap(cap).max_per_epoch == 1000


def test_a_retry_after_cancellation_uses_the_owned_inputs_new_version(
    node: SuiNodeStandIn, ledger: SuiLedger
) -> None:
    """A cancelled transaction still bumps its owned inputs (the Pipe): the retry reads
    the pipe again instead of naming its old version."""
    server, client = _funded(node), _funded(node)
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7, "raw", SLA)
    cap = ledger.create_spending_cap(client, 10**6)
    opened = ledger.open_connection(client, host, 7, cap, 5000)
    terms = ledger.create_retention_terms(server, host, 7, 60_000, 2)
    pipe = ledger.create_pipe(client, opened.connection_id, 1)
    version = node.state.object(pipe)
    node.cancel_next(1)
    record = ledger.send_retained(client, pipe, terms, 0, b"kept")
    assert ledger.get_retained_record(record).deposit == 8
    after = node.state.object(pipe)
    assert version is not None and after is not None and after.version > version.version


def test_a_deleted_shared_object_is_object_not_found(
    node: SuiNodeStandIn, ledger: SuiLedger
) -> None:
    """Its ref was remembered; the node refuses the transaction naming an input it cannot
    find, which is ObjectNotFound (as LocalLedger says), not a malformed transaction."""
    server, client = _funded(node), _funded(node)
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7, "raw", SLA)
    cap = ledger.create_spending_cap(client, 10**6)
    opened = ledger.open_connection(client, host, 7, cap, 5000)
    terms = ledger.create_retention_terms(server, host, 7, 1, 1)
    pipe = ledger.create_pipe(client, opened.connection_id, 1)
    record = ledger.send_retained(client, pipe, terms, 0, b"gone")
    ledger.confirm_consumed(server, record)
    node.advance_clock(10)
    assert ledger.delete_retained(client, record) == 4
    with pytest.raises(ObjectNotFound):
        ledger.confirm_consumed(server, record)


def test_shared_object_refs_are_read_once(node: SuiNodeStandIn, ledger: SuiLedger) -> None:
    client = _funded(node)
    cap = ledger.create_spending_cap(client, 1000)
    ledger.set_max_per_epoch(client, cap, 2000)
    reads = node.calls["GetObject"]
    ledger.set_max_per_epoch(client, cap, 3000)
    assert node.calls["GetObject"] == reads  # its initial shared version is remembered
    assert ledger.get_cap(cap).max_per_epoch == 3000  # contents are read afresh


def test_rate_limited_reads_back_off_and_succeed(node: SuiNodeStandIn, ledger: SuiLedger) -> None:
    client = _funded(node)
    cap = ledger.create_spending_cap(client, 1000)
    node.refuse_next(2, "GetObject")
    assert ledger.get_cap(cap).max_per_epoch == 1000
    node.refuse_next(10, "GetObject")
    with pytest.raises(dtp.errors.LedgerUnavailable, match="rate limiting"):
        ledger.get_cap(cap)


def test_outage_and_resume_keep_state(node: SuiNodeStandIn, ledger: SuiLedger) -> None:
    client = _funded(node)
    cap = ledger.create_spending_cap(client, 1000)
    node.go_away()
    with pytest.raises(dtp.errors.LedgerUnavailable):
        ledger.get_cap(cap)
    node.come_back()
    assert ledger.get_cap(cap).max_per_epoch == 1000
    ledger.set_max_per_epoch(client, cap, 7)
    assert ledger.get_cap(cap).max_per_epoch == 7


def test_a_garbled_answer_to_an_execution_may_have_executed(
    node: SuiNodeStandIn, ledger: SuiLedger
) -> None:
    """The node executed it but its answer does not decode: MalformedResponse saying it
    may have executed; the gas coins are read again, so the next transaction works."""
    client = _funded(node)
    cap = ledger.create_spending_cap(client, 1000)
    node.garble_next(1, "ExecuteTransaction")
    with pytest.raises(MalformedResponse, match="may still have executed"):
        ledger.set_max_per_epoch(client, cap, 2000)
    assert ledger.get_cap(cap).max_per_epoch == 2000  # it did
    ledger.set_max_per_epoch(client, cap, 3000)
    assert ledger.get_cap(cap).max_per_epoch == 3000
    node.garble_next(1, "GetObject")
    with pytest.raises(MalformedResponse):
        ledger.get_cap(cap)


def test_running_out_of_gas_is_insufficient_funds(node: SuiNodeStandIn, ledger: SuiLedger) -> None:
    poor = _funded(node, 52_000_000)
    assert ledger.gas_balance(poor.sui_address) == 52_000_000
    ledger.create_spending_cap(poor, 1)
    left = ledger.gas_balance(poor.sui_address)
    assert left == 52_000_000 - node.gas_paid(poor.sui_address) < ledger.config.gas_budget
    sent = node.calls["ExecuteTransaction"]
    with pytest.raises(InsufficientFunds) as info:
        ledger.create_spending_cap(poor, 1)
    assert info.value.name == "InsufficientCoinBalance"
    assert node.calls["ExecuteTransaction"] == sent  # refused before anything was sent
    # funded again (a faucet): the same ledger finds the new coin and goes on, where
    # its pool, not reading the node again, refused the signer for good
    node.faucet(poor.sui_address, 100_000_000)
    ledger.create_spending_cap(poor, 1)


def test_a_deposit_beyond_the_gas_coins_is_insufficient_funds(
    node: SuiNodeStandIn, ledger: SuiLedger
) -> None:
    server, client = _funded(node), _funded(node, 100_000_000)
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7, "raw", SLA)
    cap = ledger.create_spending_cap(client, 10**9)
    with pytest.raises(InsufficientFunds):
        ledger.open_connection(client, host, 7, cap, 90_000_000)


def test_a_wrong_package_id_is_named_as_such(node: SuiNodeStandIn, ledger: SuiLedger) -> None:
    owner = _funded(node)
    host = ledger.create_host(owner, owner.noise_public)
    wrong = SuiLedger(SuiConfig(node.url, "0x" + "ab" * 32, timeout=30.0))
    try:
        # reading an object of the real package through the wrong one
        with pytest.raises(ObjectNotFound, match="is that the right package ID"):
            wrong.get_host(host)
        # calling a package the network does not have: the node's refusal, typed, with
        # the settings that name the package
        with pytest.raises(ObjectNotFound, match="--sui-package") as info:
            wrong.create_spending_cap(owner, 5)
        assert info.value.name == "PackageNotFound"
    finally:
        wrong.close()
