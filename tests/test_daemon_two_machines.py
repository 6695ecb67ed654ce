"""The services daemon across two machines: the provider daemon in network namespace A,
the forwarder in namespace B (tests/netns.py; needs root and iproute2), each with its own
directory, identity and state. An HTTP client on B, through B's forwarder, reaches a
backend listening on A's loopback, which B cannot reach itself.

Interim step: both daemons still name one LocalLedger file, shared through the
filesystem the namespaces have in common. With a ledger node on the root namespace
(reachable from both at ``netns.root_address``), each daemon's ``ledger`` line names the
node instead: the one line :func:`ledger_specs` returns.
"""

from __future__ import annotations

import json
from pathlib import Path

from dtp.chain.local import LocalLedger
from dtp.daemon.state import read_status
from tests.daemon_procs import backend, daemon_pair, wait_until
from tests.netns import TwoMachines
from tests.netns_clients import run_client


def ledger_specs(netns: TwoMachines, tmp: Path) -> tuple[str, str]:
    """The ``[daemon] ledger`` of the provider and of the forwarder.

    INTERIM: one LocalLedger file for both, on the host's filesystem. The two machines
    share nothing else; a node URL on ``netns.root_address`` takes this file's place."""
    shared = str(tmp / "ledger.sqlite")
    return shared, shared


def counters(state_dir: Path, kind: str) -> dict[str, int]:
    status = read_status(state_dir)
    assert status is not None
    return status[kind]["svc"]  # type: ignore[no-any-return]


def test_http_through_a_forwarder_on_b_reaches_a_backend_on_a(
    netns: TwoMachines, tmp_path: Path
) -> None:
    http = netns.track(backend("http", netns=netns.a.name))  # on A's 127.0.0.1
    provider_ledger, forwarder_ledger = ledger_specs(netns, tmp_path)
    pair = daemon_pair(
        netns,
        provider_ledger,
        forwarder_ledger,
        tmp_path,
        [f"127.0.0.1:{http.info['port']}"],
        service_extra='kind = "http"',  # a free service: no prices
    )
    # the provider publishes its address on the A-B link, the only way to A that B has
    endpoint_host = pair.provider.info["endpoint"].rsplit(":", 1)[0]
    assert endpoint_host == netns.a.address
    assert pair.forwarder.info["address"] != pair.provider.info["address"]

    host, port = pair.forward
    url = f"http://{host}:{port}/rpc"
    for i, method, params, result in [
        (1, "whoami", [], http.info["port"]),
        (2, "echo", ["across", "machines"], ["across", "machines"]),
    ]:
        body = json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
        got = run_client(netns, netns.b, "http", url, body)
        assert got["status"] == 200, got
        assert json.loads(got["reply"]) == {"jsonrpc": "2.0", "id": i, "result": result}
    # B cannot reach the backend on its own: only through the daemons
    direct = run_client(netns, netns.b, "tcp", "127.0.0.1", str(http.info["port"]), "x")
    assert direct["error"].startswith("ConnectionRefusedError")

    served = wait_until(
        lambda: (
            (row := counters(pair.provider_dir / "state", "services"))["tunnels"] == 2
            and row["active_tunnels"] == 0
            and row
        ),
        what="the provider's two tunnels",
    )
    assert served["connections"] == 1 and served["bytes_in"] > 0 and served["bytes_out"] > 0
    # (each status file is written at most twice a second: waited for, as the provider's)
    wait_until(
        lambda: counters(pair.forwarder_dir / "state", "forwards")["tunnels"] == 2,
        what="the forwarder's two tunnels",
    )
    assert pair.forwarder.stop() == 0 and pair.provider.stop() == 0

    # INTERIM: read through the shared file; with a node, through the node's client
    ledger = LocalLedger(provider_ledger)
    try:
        audit = ledger.audit()
    finally:
        ledger.close()
    assert audit["escrows"] == 0  # the connection was closed and settled
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
