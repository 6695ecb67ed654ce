"""The services daemon across two machines on Sui: the provider daemon in network
namespace A, the forwarder in namespace B (tests/netns.py; needs root and iproute2),
each with its own directory, identity and state, sharing no file. The ledger is the
Sui node stand-in (tests/sui_node) as a process in the root namespace, which both reach
at ``netns.root_address``; each daemon names it in one line, ``ledger =
"localnet@http://<root address>:<port>"`` with ``sui_package``, as it would name a
localnet or testnet node. Transactions take 0.3 s, as on a network.

A real HTTP client (``curl`` when installed, else the project's Python client) on B
reaches, through B's forwarder, a *paid* backend listening on A's loopback, which B
cannot reach itself; the forwarder's receipts, the provider's claim and the client's
refund of the rest are then read back from the node: claimed = the fee the receipts
signed for, claimed + refunded = the deposit, every MIST accounted for with gas. The
outage variant takes the node away mid-transfer: the transfer completes, open
connections keep carrying (and billing) tunnels, a new connection is refused with the
reason, and once the node is back the provider's settlement goes through, nothing lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.chain.objects import Sla
from dtp.daemon.state import RECEIPTS_FILE, read_status
from dtp.escrow import fee
from dtp.receipt_store import ReceiptStore
from tests.daemon_procs import (
    SUI,
    DaemonPair,
    Proc,
    SuiNodeProcess,
    backend,
    daemon_pair,
    new_identity,
    wait_until,
)
from tests.netns import Machine, TwoMachines
from tests.netns_clients import run_client
from tests.sui_node.state import NodeState

SLA = Sla(price_per_kib=2_000, price_per_request=50_000, min_deposit=10_000_000)
DEPOSIT = 200_000_000
FUNDS = 20 * SUI
PRICES = f"""kind = "http"
price_per_kib = {SLA.price_per_kib}
price_per_request = {SLA.price_per_request}
min_deposit = {SLA.min_deposit}"""


@dataclass
class OnSui:
    """A Sui node stand-in in the root namespace and the daemon pair using it."""

    node: SuiNodeProcess
    pair: DaemonPair
    http: Proc
    addresses: tuple[str, str]
    """The provider's and the forwarder's Sui addresses, funded with FUNDS each."""


def start_on_sui(netns: TwoMachines, tmp: Path, forward_extra: str = "") -> OnSui:
    """Identities first (``dtp keys new``), funded by the node's faucet as it starts,
    then the two daemons, each naming the node; the provider serves a paid HTTP
    backend on A's loopback."""
    provider = new_identity(tmp / "provider" / "host.key")
    forwarder = new_identity(tmp / "forwarder" / "client.key")
    node = netns.track(
        SuiNodeProcess(
            netns.root_address,
            tmp / "node",
            {provider: FUNDS, forwarder: FUNDS},
            ("--tx-latency", "0.3"),
        )
    )
    http = netns.track(backend("http", netns=netns.a.name))
    pair = daemon_pair(
        netns,
        node.spec,
        node.spec,
        tmp,
        [f"127.0.0.1:{http.info['port']}"],
        service_extra=PRICES,
        forward_extra=f"deposit = {DEPOSIT}\n{forward_extra}",
        daemon_extra=f'sui_package = "{node.package}"',
        faucet=None,
    )
    assert pair.provider.info["address"] == provider
    assert pair.forwarder.info["address"] == forwarder
    return OnSui(node, pair, http, (provider, forwarder))


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


def audit_node(on_sui: OnSui, connections: list[str]) -> dict[str, Any]:
    """Once the node stopped: each connection's escrow, every address's balance and gas,
    read from the node's own state; checks that MIST was conserved."""
    state = NodeState(on_sui.node.state, package=on_sui.node.package)
    try:
        audit = state.audit()
        assert audit["escrows"] == 0  # every connection settled
        assert audit["minted"] == (
            audit["balances"] + audit["escrows"] + audit["broadcasts"] + audit["gas"]
        )
        escrows = []
        for cid in connections:
            tc = state.ledger.get_connection(cid)
            assert tc.settled
            escrows.append(state.ledger.get_escrow(tc.escrow))
        return {
            "escrows": escrows,
            "balances": [state.ledger.balance(a) for a in on_sui.addresses],
            "gas": [state.gas_paid(a) for a in on_sui.addresses],
        }
    finally:
        state.close()


def test_curl_on_b_pays_a_service_on_a_through_a_sui_node(
    netns: TwoMachines, tmp_path: Path
) -> None:
    on_sui = start_on_sui(netns, tmp_path)
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
    assert on_sui.node.stop() == 0

    # one DTP connection carried the three tunnels; what its receipts signed for was
    # claimed, the rest refunded
    assert len(connections) == 1 and paid["connections"] == 1 and served["connections"] == 1
    owed = fee(SLA, paid["bytes_in"] + paid["bytes_out"], paid["tunnels"])
    assert paid["fees_paid"] == owed > 3 * SLA.price_per_request
    assert served["fees_earned"] == served["fees_claimed"] == owed
    assert served["refunded"] == DEPOSIT - owed
    node = audit_node(on_sui, connections)
    (escrow,) = node["escrows"]
    assert escrow.deposited == DEPOSIT and escrow.claimed == owed
    (provider_balance, forwarder_balance), (provider_gas, forwarder_gas) = (
        node["balances"],
        node["gas"],
    )
    assert provider_balance == FUNDS + owed - provider_gas
    assert forwarder_balance == FUNDS - owed - forwarder_gas
    assert provider_gas > 0 and forwarder_gas > 0
    # the status showed each daemon its gas (a LocalLedger's balance has none)
    for state_dir in (provider_state, forwarder_state):
        status = read_status(state_dir)
        assert status is not None
        assert status["gas"]["state"] == "ok" and status["gas"]["balance"] > 0


def test_the_node_going_away_mid_transfer_loses_nothing(netns: TwoMachines, tmp_path: Path) -> None:
    """The node goes away while a transfer runs: the transfer completes, another
    tunnel on the open connection is served (and billed: receipts are off the ledger),
    a forward that needs a new connection is refused at once with the reason, and the
    connection's settlement, failed while the node was away, goes through once it is
    back: the fee the receipts signed for claimed, the rest refunded."""
    if shutil.which("curl") is None:
        pytest.skip("the transfer held open across the outage is curl's --limit-rate")
    # a second forward to the same service: its first tunnel needs a connection of its own
    second = '[[forward]]\nname = "fresh"\nlisten = "127.0.0.1:0"\n'
    on_sui = start_on_sui(netns, tmp_path, forward_extra=second + 'target = "dtp://{host_id}:7000"')
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
    on_sui.node.away()
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

    on_sui.node.back()
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
    connections = connections_of(pair)
    assert on_sui.node.stop() == 0
    node = audit_node(on_sui, connections)
    (escrow,) = node["escrows"]
    assert escrow.deposited == DEPOSIT and escrow.claimed == owed
    assert node["balances"][1] == FUNDS - owed - node["gas"][1]
    assert node["balances"][0] == FUNDS + owed - node["gas"][0]
