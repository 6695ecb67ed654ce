"""The services daemon across two machines on Sui: the provider daemon in network
namespace A, the forwarder in namespace B (tests/support/netns.py; needs root and iproute2),
each with its own directory, identity and state, sharing no file. The ledger is the Sui
network of the tests' one switch (tests/support/sui_network.py): the node stand-in as a process
of its own, its transactions taking 0.3 s as on a network, or the real node
``DTP_SUI_RPC``, ``DTP_SUI_PACKAGE`` and ``DTP_SUI_KEY`` name (scripts/sui-localnet.sh).
Either serves on the root namespace's loopback, which the namespaces cannot reach: a
relay (tests/support/sui_proxies.py) on ``netns.root_address`` forwards to it, and each daemon
names the relay in one line, ``ledger = "localnet@http://<root address>:<port>"`` with
``sui_package``, as it would name a localnet or testnet node. The daemons' addresses are
funded by transfers from the network's funded key.

A real HTTP client (``curl`` when installed, else the project's Python client) on B
reaches, through B's forwarder, a *paid* backend listening on A's loopback, which B
cannot reach itself; the forwarder's receipts, the provider's claim and the client's
refund of the rest are then read back from the ledger as any client reads it: claimed =
the fee the receipts signed for, claimed + refunded = the deposit, each balance = what
it was funded with, plus or minus the fee, less the gas the effects of its transactions
report. On the stand-in its own books are checked too (every MIST it minted accounted
for; its gas count the same as the effects'). The outage variant has the relay take the
node away mid-transfer (the port refuses, open connections are cut), on either node: the
transfer completes, open connections keep carrying (and billing) tunnels, a new
connection is refused with the reason, and once the node is back the provider's
settlement goes through, nothing lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dtp.daemon._state import RECEIPTS_FILE, read_status
from dtp.ledger._objects import Escrow, EventFilter, Sla
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import fee
from dtp.testing.sui_node._state import NodeState
from tests.support.daemon_procs import (
    SUI,
    DaemonPair,
    Proc,
    backend,
    daemon_pair,
    new_identity,
    wait_until,
)
from tests.support.netns import Machine, TwoMachines
from tests.support.netns_clients import run_client
from tests.support.sui_network import SuiNetwork, gas_from_effects, sui_network_process
from tests.support.sui_proxies import Relay

#: Prices at which a connection's fees cover the gas of its end (each tunnel a request:
#: three pay 6 M MIST, an end costs about 3.3 M on the stand-in), so that the provider
#: claims and settles it rather than leave it to the forwarder (docs/daemon.md, "On Sui")
SLA = Sla(price_per_kib=2_000, price_per_request=2_000_000, min_deposit=10_000_000)
DEPOSIT = 200_000_000
FUNDS = 20 * SUI
PRICES = f"""kind = "http"
price_per_kib = {SLA.price_per_kib}
price_per_request = {SLA.price_per_request}
min_deposit = {SLA.min_deposit}"""


@pytest.fixture
def node_state(tmp_path: Path) -> Path:
    """Where the stand-in keeps its state (read by its own audit once it stopped)."""
    return tmp_path / "node"


@pytest.fixture
def network(node_state: Path) -> Iterator[SuiNetwork]:
    """The switch's Sui network: the stand-in as a process on 127.0.0.1, or the real node."""
    with sui_network_process("--tx-latency", "0.3", state=node_state) as network:
        yield network


@pytest.fixture
def relay(netns: TwoMachines, network: SuiNetwork) -> Iterator[Relay]:
    """The node as both machines reach it: a relay on ``netns.root_address``."""
    url = urlsplit(network.url)
    if url.scheme != "http":
        pytest.skip(
            f"the relay carries plain TCP; the daemons' TLS to {network.url} would meet the "
            "relay's address, not the node's name"
        )
    relay = Relay((url.hostname or "127.0.0.1", url.port or 80), host=netns.root_address)
    try:
        yield relay
    finally:
        relay.close()


@dataclass
class OnSui:
    """A Sui network, the relay to it and the daemon pair using it."""

    network: SuiNetwork
    relay: Relay
    node_state: Path
    pair: DaemonPair
    http: Proc
    addresses: tuple[str, str]
    """The provider's and the forwarder's Sui addresses, funded with FUNDS each."""


def start_on_sui(
    netns: TwoMachines,
    network: SuiNetwork,
    relay: Relay,
    tmp: Path,
    node_state: Path,
    forward_extra: str = "",
    daemon_extra: str = "",
) -> OnSui:
    """Identities first (``dtp keys new``), funded by transfers, then the two daemons,
    each naming the node through the relay; the provider serves a paid HTTP backend on
    A's loopback. ``daemon_extra``: more ``[daemon]`` lines for both."""
    provider = new_identity(tmp / "provider" / "host.key")
    forwarder = new_identity(tmp / "forwarder" / "client.key")
    reader = network.ledger()
    for address in (provider, forwarder):
        network.fund(address, FUNDS)
        assert reader.balance(address) == FUNDS  # (fresh addresses: the audit starts here)
    http = netns.track(backend("http", netns=netns.a.name))
    # the spec naming the node, at the relay's address
    spec = network.spec.replace(network.url, relay.url)
    pair = daemon_pair(
        netns,
        spec,
        spec,
        tmp,
        [f"127.0.0.1:{http.info['port']}"],
        service_extra=PRICES,
        forward_extra=f"deposit = {DEPOSIT}\n{forward_extra}",
        daemon_extra=f'sui_package = "{network.package_id}"\n{daemon_extra}',
        faucet=None,
    )
    assert pair.provider.info["address"] == provider
    assert pair.forwarder.info["address"] == forwarder
    assert relay.connections >= 2  # each daemon reached the node through the relay
    return OnSui(network, relay, node_state, pair, http, (provider, forwarder))


def post(netns: TwoMachines, machine: Machine, url: str, body: str, rate: str = "") -> Any:
    """POST ``body`` to ``url`` from ``machine`` with curl (``rate``: curl's
    ``--limit-rate``), or with the project's Python client where curl is missing;
    ``{"status", "reply"}`` or ``{"error"}``."""
    if shutil.which("curl") is None:
        return run_client(netns, machine, "http", url, body)
    cmd = ["curl", "-sS", "-m", "20", "-H", "Content-Type: application/json"]
    cmd += ["--data-binary", "@-", "-w", "\n%{http_code}", url]
    if rate:
        cmd += ["--limit-rate", rate]
    done = netns.run(machine, cmd, input=body)
    if done.returncode != 0:
        return {"error": done.stderr.strip()}
    reply, _, status = done.stdout.rpartition("\n")
    return {"status": int(status), "reply": reply}


def rpc(i: int, method: str, params: list[Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params})


def row(state_dir: Path, kind: str, name: str = "svc") -> dict[str, Any]:
    status = read_status(state_dir)
    assert status is not None
    return status[kind][name]  # type: ignore[no-any-return]


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def connections_of(pair: DaemonPair) -> list[str]:
    """The ledger connections the provider served, as its log names them."""
    lines = log_lines(pair.provider_dir / "dtp.log")
    return [line["connection"] for line in lines if line["msg"] == "connection open"]


@dataclass
class LedgerAudit:
    """What the ledger shows once both daemons stopped, per connection and per daemon
    (provider first)."""

    escrows: list[Escrow]
    balances: list[int]
    gas: list[int]
    """Net gas each daemon paid, summed over the effects of its transactions."""


def audit_ledger(on_sui: OnSui, connections: list[str]) -> LedgerAudit:
    """Read the ledger as any client reads it, on either node: each connection's escrow
    (settled, holding nothing), each daemon's balance, and the gas of every transaction
    it paid for, from their effects (tests/support/sui_network.py: gas_from_effects)."""
    ledger = on_sui.network.ledger()
    escrows = []
    for cid in connections:
        tc = ledger.get_connection(cid)
        escrow = ledger.get_escrow(tc.escrow)
        assert tc.settled and escrow.settled and escrow.balance == 0
        escrows.append(escrow)
    gas = []
    for address in on_sui.addresses:
        paid = gas_from_effects(ledger, address)
        # the walk found at least every transaction of the daemon's that emitted an event
        events, _ = ledger.events(filter=EventFilter(sender=address))
        assert events and {event.tx_digest for event in events} <= set(paid)
        gas.append(sum(paid.values()))
    return LedgerAudit(escrows, [ledger.balance(a) for a in on_sui.addresses], gas)


def check_money(on_sui: OnSui, connections: list[str], owed: int) -> None:
    """The end-of-test audit, once both daemons stopped: on either node, one connection
    whose escrow paid the provider the fee the receipts signed for and refunded the rest,
    and each daemon's balance = FUNDS, plus or minus that fee, less the gas its
    transactions' effects report. On the stand-in, once it stopped, its own books too:
    every MIST it minted accounted for, and its count of each address's gas and balance
    the same as the ledger's figures."""
    audit = audit_ledger(on_sui, connections)
    (escrow,) = audit.escrows
    assert (escrow.deposited, escrow.claimed, escrow.refunded) == (DEPOSIT, owed, DEPOSIT - owed)
    provider_gas, forwarder_gas = audit.gas
    assert provider_gas > 0 and forwarder_gas > 0
    assert audit.balances == [FUNDS + owed - provider_gas, FUNDS - owed - forwarder_gas]
    process = on_sui.network.process
    if process is None:
        return  # a real node: its books are its own
    process.close()
    assert process.proc.returncode == 0
    state = NodeState(on_sui.node_state, package=on_sui.network.package_id)
    try:
        books = state.audit()
        assert books["escrows"] == 0  # every connection settled
        assert books["minted"] == (
            books["balances"] + books["escrows"] + books["broadcasts"] + books["gas"]
        )
        assert [state.gas_paid(a) for a in on_sui.addresses] == audit.gas
        assert [state.ledger.balance(a) for a in on_sui.addresses] == audit.balances
    finally:
        state.close()


def test_curl_on_b_pays_a_service_on_a_through_a_sui_node(
    netns: TwoMachines, network: SuiNetwork, relay: Relay, node_state: Path, tmp_path: Path
) -> None:
    on_sui = start_on_sui(netns, network, relay, tmp_path, node_state)
    pair = on_sui.pair
    # the provider publishes its address on the A-B link, the only way to A that B has
    assert pair.provider.info["endpoint"].rsplit(":", 1)[0] == netns.a.address
    host, port = pair.forward
    url = f"http://{host}:{port}/rpc"
    payload = "x" * 3000
    for i in range(3):
        got = post(netns, netns.b, url, rpc(i, "echo", [payload]))
        assert got.get("status") == 200, got
        assert json.loads(got["reply"])["result"] == [payload]
    # B cannot reach the backend on its own: only through the daemons
    direct = run_client(netns, netns.b, "tcp", "127.0.0.1", str(on_sui.http.info["port"]), "x")
    assert direct["error"].startswith("ConnectionRefusedError")

    provider_state, forwarder_state = pair.provider_dir / "state", pair.forwarder_dir / "state"
    wait_until(
        lambda: (
            (r := row(forwarder_state, "forwards"))["tunnels"] == 3 and r["active_tunnels"] == 0
        ),
        what="the forwarder's three tunnels",
    )
    # the forwarder stops: its connection ends, the provider claims and settles it
    assert pair.forwarder.stop() == 0
    served = wait_until(
        lambda: (r := row(provider_state, "services"))["refunded"] and r,
        timeout=20,
        what="the provider's claim and settlement",
    )
    paid = row(forwarder_state, "forwards")
    assert pair.provider.stop() == 0
    connections = connections_of(pair)

    # one DTP connection carried the three tunnels; what its receipts signed for was
    # claimed, the rest refunded
    assert len(connections) == 1 and paid["connections"] == 1 and served["connections"] == 1
    owed = fee(SLA, paid["bytes_in"] + paid["bytes_out"], paid["tunnels"])
    assert paid["fees_paid"] == owed > 3 * SLA.price_per_request
    assert served["fees_earned"] == served["fees_claimed"] == owed
    assert served["refunded"] == DEPOSIT - owed
    check_money(on_sui, connections, owed)
    # the status showed each daemon its gas (a LocalLedger's balance has none)
    for state_dir in (provider_state, forwarder_state):
        status = read_status(state_dir)
        assert status is not None
        assert status["gas"]["state"] == "ok" and status["gas"]["balance"] > 0


def test_the_sui_node_going_away_mid_transfer_loses_nothing(
    netns: TwoMachines, network: SuiNetwork, relay: Relay, node_state: Path, tmp_path: Path
) -> None:
    """The node goes away (the relay to it refuses connections and cuts the open ones)
    while a transfer runs: the transfer completes, another tunnel on the open connection
    is served (and billed: receipts are off the ledger), a forward that needs a new
    connection is refused at once with the reason, and the connection's settlement,
    failed while the node was away, goes through once it is back: the fee the receipts
    signed for claimed, the rest refunded."""
    if shutil.which("curl") is None:
        pytest.skip("the transfer held open across the outage is curl's --limit-rate")
    # a second forward to the same service: its first tunnel needs a connection of its own
    second = '[[forward]]\nname = "fresh"\nlisten = "127.0.0.1:0"\n'
    target = 'target = "dtp://{host_id}:7000"'
    on_sui = start_on_sui(netns, network, relay, tmp_path, node_state, second + target)
    pair = on_sui.pair
    provider_state, forwarder_state = pair.provider_dir / "state", pair.forwarder_dir / "state"
    host, port = pair.forward
    url = f"http://{host}:{port}/rpc"
    assert post(netns, netns.b, url, rpc(0, "echo", ["open"]))["status"] == 200

    big = "y" * 200_000  # (each way at 100 KB/s: four seconds)
    body = tmp_path / "body.json"
    body.write_text(rpc(1, "echo", [big]))
    transfer = subprocess.Popen(
        netns.command(
            netns.b,
            ["curl", "-sS", "-m", "30", "--limit-rate", "100k", "-H",
             "Content-Type: application/json", "--data-binary", f"@{body}", url],
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(
        lambda: row(forwarder_state, "forwards")["active_tunnels"] == 1,
        what="the transfer's tunnel",
    )
    on_sui.relay.away()
    assert transfer.poll() is None  # still under way
    out, err = transfer.communicate(timeout=30)
    assert json.loads(out)["result"] == [big], err
    wait_until(lambda: "cannot read the host" in pair.provider.log(), what="the node away")

    # the open connection goes on carrying tunnels, billed by receipts off the ledger
    got = post(netns, netns.b, url, rpc(2, "echo", ["during"]))
    assert got.get("status") == 200, got
    # a new connection cannot be opened: refused at once, with the reason in the log
    fresh_host, fresh_port = pair.forwarder.info["forwards"]["fresh"].rsplit(":", 1)
    refused = post(netns, netns.b, f"http://{fresh_host}:{fresh_port}/rpc", rpc(3, "echo", []))
    assert "error" in refused and "timed out" not in refused["error"], refused
    failures = [
        line for line in log_lines(pair.forwarder_dir / "dtp.log")
        if line["msg"] == "cannot open a connection"
    ]  # fmt: skip
    assert failures and "unreachable" in failures[0]["error"], failures

    # the forwarder stops while the node is away: its connection ends, and the
    # provider's claim and settlement fail -- to be tried again, not lost
    wait_until(
        lambda: (
            (r := row(forwarder_state, "forwards"))["tunnels"] == 3 and r["active_tunnels"] == 0
        ),
        what="the forwarder's three tunnels",
    )
    assert pair.forwarder.stop() == 0
    paid = row(forwarder_state, "forwards")
    owed = fee(SLA, paid["bytes_in"] + paid["bytes_out"], paid["tunnels"])
    assert paid["fees_paid"] == owed
    wait_until(
        lambda: "settlement failed" in pair.provider.log(), timeout=20, what="a failed claim"
    )
    held = row(provider_state, "services")
    assert held["fees_earned"] == owed and held["fees_claimed"] == 0
    # the receipt waits in the provider's store, unclaimed (its connection is no
    # longer open: not in the status's "receipts held")
    (cid,) = connections_of(pair)
    store = ReceiptStore(provider_state / RECEIPTS_FILE)
    try:
        stored = store.latest(cid)
        assert stored is not None and stored.unclaimed == owed
    finally:
        store.close()

    on_sui.relay.back()
    served = wait_until(
        lambda: (r := row(provider_state, "services"))["refunded"] and r,
        timeout=20,
        what="the settlement once the node is back",
    )
    assert served["fees_claimed"] == owed and served["refunded"] == DEPOSIT - owed
    provider_log = pair.provider.log()
    assert provider_log.count("cannot read the host") == 1  # said once, not every refresh
    assert "the ledger can be read again" in provider_log
    assert "settled after a failure" in provider_log
    assert pair.provider.stop() == 0
    check_money(on_sui, connections_of(pair), owed)
