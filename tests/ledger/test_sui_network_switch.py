"""The tests' one switch between the node stand-in and a real Sui node
(tests/support/sui_network.py), with a stand-in process playing the real node: DTP_SUI_RPC,
DTP_SUI_PACKAGE and DTP_SUI_KEY name it, as scripts/sui-localnet.sh names a localnet."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger.sui import SuiConfig, SuiLedger
from tests.support.daemon_procs import ENV, ROOT
from tests.support.sui_network import (
    REAL_NODE_ENV,
    STAND_IN_FUNDS,
    StandInProcess,
    gas_from_effects,
    ledger_spec_for,
    real_node_configured,
    sui_network,
    sui_network_process,
)

SUI = 1_000_000_000


@pytest.fixture
def real_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StandInProcess, HostIdentity]]:
    """A stand-in process named by the three variables, as a real node would be."""
    key = HostIdentity.generate()
    node = StandInProcess(fund={key.sui_address: 100 * SUI})
    monkeypatch.setenv("DTP_SUI_RPC", node.url)
    monkeypatch.setenv("DTP_SUI_PACKAGE", node.package_id)
    monkeypatch.setenv("DTP_SUI_KEY", key.to_sui_bech32())
    try:
        yield node, key
    finally:
        node.close()


def test_all_three_variables_or_the_stand_in() -> None:
    full = {"DTP_SUI_RPC": "http://127.0.0.1:9000", "DTP_SUI_PACKAGE": "0x2", "DTP_SUI_KEY": "k"}
    assert real_node_configured(full)
    for name in REAL_NODE_ENV:
        assert not real_node_configured({**full, name: ""}), name
        assert not real_node_configured({k: v for k, v in full.items() if k != name}), name
    assert not real_node_configured({})


def test_the_spec_names_a_node_on_this_machine_as_localnet() -> None:
    assert ledger_spec_for("http://127.0.0.1:9000") == "localnet@http://127.0.0.1:9000"
    assert ledger_spec_for("http://localhost:9000") == "localnet@http://localhost:9000"
    assert ledger_spec_for("http://[::1]:9000") == "localnet@http://[::1]:9000"
    remote = "https://fullnode.testnet.sui.io:443"
    assert ledger_spec_for(remote) == f"sui:{remote}"
    assert ledger_spec_for("http://10.200.1.1:9000") == "sui:http://10.200.1.1:9000"


def test_without_the_variables_a_test_gets_the_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REAL_NODE_ENV:
        monkeypatch.delenv(name, raising=False)
    with sui_network(clock_ms=0) as network:
        assert network.node is not None and not network.real and network.moves_clock
        assert network.ledger().balance(network.funder.sui_address) == STAND_IN_FUNDS
        someone = HostIdentity.generate().sui_address
        network.fund(someone, 5)  # the faucet: no gas, exactly what was asked
        assert network.ledger().balance(someone) == 5
        assert network.advance_clock(1_000) == 1_000
        assert network.gas_paid(someone) == 0


def test_with_the_variables_every_test_uses_that_node(
    real_node: tuple[StandInProcess, HostIdentity],
) -> None:
    node, key = real_node
    with sui_network() as network:
        assert network.real and network.node is None and not network.moves_clock
        assert (network.url, network.package_id) == (node.url, node.package_id)
        assert network.funder.sui_address == key.sui_address
        assert network.spec == f"localnet@{node.url}"
        assert network.args == ["--ledger", network.spec, "--sui-package", node.package_id]
        assert network.gas_paid(key.sui_address) is None
        # funding is a transfer from the funded key, which pays its gas
        someone = HostIdentity.generate().sui_address
        network.fund(someone, 2 * SUI)
        ledger = network.ledger()
        assert ledger.balance(someone) == 2 * SUI
        assert ledger.balance(key.sui_address) < 98 * SUI
        # a step that moves the clock stops the test there, skipped with the reason
        with pytest.raises(pytest.skip.Exception, match="cannot be moved"):
            network.advance_clock(1_000)
        # the dtp command reaches the node with the network's arguments
        done = subprocess.run(
            [sys.executable, "-m", "dtp", "balance", someone, "--json", *network.args],
            cwd=ROOT,
            env={k: v for k, v in ENV.items() if not k.startswith("DTP_")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["balance_mist"] == 2 * SUI
    # the process variant is the same node then, not a stand-in of its own
    with sui_network_process("--tx-latency", "5") as network:
        assert network.real and network.process is None and network.url == node.url


def test_the_stand_in_as_a_process_funds_by_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REAL_NODE_ENV:
        monkeypatch.delenv(name, raising=False)
    with sui_network_process() as network:
        assert network.process is not None and not network.real and not network.moves_clock
        someone = HostIdentity.generate().sui_address
        network.fund(someone, SUI)
        ledger = SuiLedger(SuiConfig(network.url, network.package_id))
        try:
            assert ledger.balance(someone) == SUI
        finally:
            ledger.close()
        process = network.process
    assert process.proc.poll() is not None  # stopped with the network


def test_the_stand_in_as_a_process_with_its_state_in_files_moves_its_clock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its state's LocalLedger file holds the clock, which the test's process moves:
    a client of the node reads the new time (tests/daemon/test_two_machines_outage.py
    runs its ten minutes so)."""
    for name in REAL_NODE_ENV:
        monkeypatch.delenv(name, raising=False)
    with sui_network_process(state=tmp_path / "node") as network:
        assert network.moves_clock
        ledger = SuiLedger(SuiConfig(network.url, network.package_id))
        try:
            before = ledger.clock_ms()
            moved = network.advance_clock(600_000)
            assert moved >= before + 600_000
            assert ledger.clock_ms() >= moved
        finally:
            ledger.close()


def test_gas_from_effects_finds_every_transaction_an_address_paid_for() -> None:
    """On either node: the transactions an address paid for, one that aborted on chain
    too, found from its coins and their effects' dependencies, their gas accounting for
    its balance to the MIST; on the stand-in, the same as the node's own count."""
    with sui_network() as network:
        owner, stranger = HostIdentity.generate(), HostIdentity.generate()
        for who in (owner, stranger):
            network.fund(who.sui_address, SUI)
        ledger = network.ledger()
        cap = ledger.create_spending_cap(owner, 5)
        ledger.set_max_per_epoch(owner, cap, 9)
        with pytest.raises(ChainError):  # executed and aborted: its gas paid all the same
            ledger.set_max_per_epoch(stranger, cap, 7)
        network.fund(owner.sui_address, SUI)  # a coin another address paid to send
        paid = gas_from_effects(ledger, owner.sui_address)
        refused = gas_from_effects(ledger, stranger.sui_address)
        assert len(paid) == 2 and len(refused) == 1
        assert ledger.balance(owner.sui_address) == 2 * SUI - sum(paid.values())
        assert ledger.balance(stranger.sui_address) == SUI - sum(refused.values()) < SUI
        if network.node is not None:
            assert network.gas_paid(owner.sui_address) == sum(paid.values())
            assert network.gas_paid(stranger.sui_address) == sum(refused.values())
