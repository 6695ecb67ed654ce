"""A provider outage across two machines on Sui: the provider daemon in network namespace
A dies (SIGKILL) while the forwarder in namespace B has a connection open to it, and
local clients on B keep coming throughout (tests/support/netns.py, the Sui node stand-in
as a process of its own, its transactions taking 0.3 s; tests/daemon/test_two_machines.py
sets it all up).

What must hold: the outage locks at most one deposit -- the connection that was open
when the provider died; every client of the outage is refused at once, the forwarder
probing the provider's endpoint (one probe at a time, backing off) and spending
nothing on the ledger (no spending cap, no open: before, each client after the retry
delay cost a cap, an open with the whole deposit and a half-close, about 11 M MIST of
gas, and locked its deposit); and once the half-close timeout has passed, that deposit
is back with no command typed (the forwarder settles its own half-closed connection:
before, it took ``dtp refund`` by hand). The provider, back, serves again.

A ten-minute outage cannot run in CI: the outage's ten minutes are the stand-in's clock
moved by ``HALF_CLOSE_TIMEOUT_MS`` (its state is kept in files, whose LocalLedger clock
the test moves: ``StandInProcess.advance_clock``), and the forwarder looks at its
connections every half second (``refund_interval = 0.5``). The traffic of the outage is
a few seconds of the same sequence -- each probe refused, each backoff step, each client
refused -- and the settlement the same transaction the tenth minute would bring. On a
real node (``scripts/sui-localnet.sh``) the clock cannot be moved: skipped there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dtp.ledger._connections import find_connections
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, EventFilter
from dtp.payments.receipts import fee
from tests.daemon import test_two_machines as two
from tests.daemon.test_two_machines import DEPOSIT, SLA, log_lines, post, row, rpc, start_on_sui
from tests.support.daemon_procs import daemon, wait_until
from tests.support.netns import TwoMachines
from tests.support.settlements import is_settled, settled_escrow
from tests.support.sui_network import SuiNetwork
from tests.support.sui_proxies import Relay

# the Sui network, its state directory and the relay the two machines reach it through
network = two.network
node_state = two.node_state
relay = two.relay

OUTAGE_TRAFFIC = 4.0
"""Seconds of steady client traffic while the provider is down."""


def test_a_provider_outage_locks_at_most_one_deposit_and_every_deposit_comes_back(
    netns: TwoMachines, network: SuiNetwork, relay: Relay, node_state: Path, tmp_path: Path
) -> None:
    if not network.moves_clock:
        pytest.skip("the outage's ten minutes move the stand-in's clock; a network's is its own")
    # (every end settled whatever its gas: this test follows the provider's settlement of
    # a one-request connection, whose fee alone would not pay for it, docs/escrow.md §7.1)
    on_sui = start_on_sui(
        netns,
        network,
        relay,
        tmp_path,
        node_state,
        daemon_extra="refund_interval = 0.5\ngas_aware_ends = false",
    )
    pair = on_sui.pair
    forwarder = on_sui.addresses[1]
    reader = network.ledger()
    host, port = pair.forward
    url = f"http://{host}:{port}/rpc"
    assert post(netns, netns.b, url, rpc(0, "echo", ["before"])).get("status") == 200
    (first,) = [r.connection.id for r in find_connections(reader, client=forwarder).reports]
    mine = EventFilter(sender=forwarder)
    before = len(reader.events(filter=mine)[0])

    pair.provider.kill()  # the outage: the provider never settles what it served
    started = time.monotonic()
    refused = 0
    while time.monotonic() - started < OUTAGE_TRAFFIC:
        asked = time.monotonic()
        got = post(netns, netns.b, url, rpc(1, "echo", ["during"]))
        assert got.get("status") != 200, got
        assert time.monotonic() - asked < 3.0, got  # refused at once, not after a timeout
        refused += 1
        time.sleep(0.1)
    assert refused >= 10
    # the connection open when it died is half-closed: its deposit, the only one locked
    wait_until(
        lambda: reader.get_connection(first).state == ConnectionState.HALF_CLOSED,
        timeout=20,
        what="the half-close of the dead provider's connection",
    )
    unsettled = find_connections(reader, client=forwarder).reports
    assert [r.connection.id for r in unsettled] == [first]
    # and nothing else was spent on the ledger: that half-close is the only transaction
    # of the forwarder's since (no spending cap, no open)
    since = [e.type.rsplit("::", 1)[-1] for e in reader.events(filter=mine)[0][before:]]
    assert since == ["ConnectionHalfClosed"], since
    lines = log_lines(pair.forwarder_dir / "dtp.log")
    outage = [line for line in lines if line["msg"].startswith("target unreachable")]
    assert len(outage) == 1, outage  # said once, not once per probe or client
    assert row(pair.forwarder_dir / "state", "forwards")["connections"] == 1

    network.advance_clock(HALF_CLOSE_TIMEOUT_MS)  # the outage's ten minutes
    wait_until(
        lambda: is_settled(reader, first),
        timeout=20,
        what="the forwarder's own settlement",
    )
    escrow = settled_escrow(reader, first)
    # the provider died before claiming: the whole deposit came back to the client
    assert (escrow.claimed, escrow.refunded, escrow.balance) == (0, DEPOSIT, 0)
    # (logged once the settlement's effects are back: a moment after the node shows it)
    wait_until(lambda: "deposit refunded" in pair.forwarder.log(), what="its log line")

    # the provider back (the same state directory): the forwarder reaches it again
    provider = netns.track(daemon(pair.provider_dir / "dtp.toml", netns=netns.a.name))
    wait_until(
        lambda: post(netns, netns.b, url, rpc(2, "echo", ["after"])).get("status") == 200,
        timeout=30,
        what="a request served once the provider is back",
    )
    assert "target reachable again" in pair.forwarder.log()
    assert pair.forwarder.stop() == 0
    # (read from their events: the forwarder deletes a settled connection's objects)
    opened, _ = reader.events(None, EventFilter(type="ConnectionOpened", object_id=forwarder))
    cids = [str(e["connection"]) for e in opened if e["client"] == forwarder]
    assert len(cids) == 2
    wait_until(
        lambda: all(is_settled(reader, cid) for cid in cids),
        timeout=20,
        what="the provider's settlement of the second connection",
    )
    assert provider.stop() == 0
    # every deposit the forwarder put in escrow is out again: refunded, or paid for
    # what the receipts signed
    for cid in cids:
        held = settled_escrow(reader, cid)
        assert held.settled and held.balance == 0
        assert held.claimed + held.refunded == held.deposited == DEPOSIT
    second = next(settled_escrow(reader, cid) for cid in cids if cid != first)
    assert 0 < second.claimed <= fee(SLA, 1 << 20, 1)
