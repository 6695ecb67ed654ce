"""The services daemon on Sui: in-process daemons whose ``ledger`` is the Sui node
stand-in (dtp/testing/sui_node, in this process too), with what a network does that the
embedded ledger never does -- transactions that take 0.3 s, a provider whose full node
shows a client's open late, a node that stalls or goes away, congestion cancelling
transactions, gas running out -- and what the daemon makes of each (docs/daemon.md, "On
Sui"). Real DTP connections on 127.0.0.1, a real echo backend, real SQLite stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon._gas as gas_mod
import dtp.daemon._host_policy as host_policy_mod
import dtp.daemon._host_setup as host_setup_mod
import dtp.daemon._settlements as settlements_mod
from dtp.daemon._forwarder import Forwarder
from dtp.daemon._runner import Daemon
from dtp.daemon._udp_forward import UdpForward
from dtp.errors import ConnectionRefused
from dtp.identity.keys import HostIdentity
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui import _client as sui_client
from dtp.ledger.sui import _ledger as sui_core
from dtp.testing.sui_node import SuiNodeStandIn
from tests.daemon.inproc import BOUND, Client, echo_backend, running, through, tunnel, until
from tests.support.settlements import settled_escrow

SUI = 1_000_000_000
DEPOSIT = 20_000_000


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs in milliseconds rather than seconds (the node's answers are local)."""
    monkeypatch.setattr(sui_client, "_RETRY_DELAY", 0.001)
    monkeypatch.setattr(sui_client, "_RATE_LIMITED_DELAY", 0.001)
    monkeypatch.setattr(sui_core, "_CONGESTION_DELAY", 0.001)


@pytest.fixture
def node() -> Any:
    with SuiNodeStandIn() as stand_in:  # (epochs of a day, as on a network)
        yield stand_in
        stand_in.state.check()


def write_config(
    tmp: Path, node: SuiNodeStandIn, name: str, body: str, extra: str = "", funds: int = 10 * SUI
) -> Path:
    """A daemon config on the stand-in, its identity funded by the node's faucet. Every
    end is settled, whatever its gas (``gas_aware_ends = false``): these tests follow
    the settlements through what a network does; the gas rule's own tests are
    tests/daemon/test_end_gas.py."""
    identity = HostIdentity.generate()
    identity.save(tmp / f"{name}.key")
    node.faucet(identity.sui_address, funds)
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[daemon]
ledger = "localnet@{node.url}"
sui_package = "{node.package_id}"
identity = "{name}.key"
state_dir = "{name}-state"
drain_timeout = 2
gas_aware_ends = false
{extra}
{body}"""
    )
    return path


def service(backend: int, extra: str = "") -> str:
    return f"""
[[service]]
name = "svc"
port = 7000
backends = ["127.0.0.1:{backend}"]
health_interval = 30
{extra}"""


PAID = "price_per_kib = 100\nprice_per_request = 1000\nmin_deposit = 1000000"


@contextlib.asynccontextmanager
async def provider(
    tmp: Path, node: SuiNodeStandIn, service_extra: str = "", **options: Any
) -> AsyncIterator[Daemon]:
    """A started provider daemon serving an echo backend as port 7000."""
    async with echo_backend() as port:
        config = write_config(tmp, node, "provider", service(port, service_extra), **options)
        async with running(config) as daemon:
            yield daemon


def client_of(node: SuiNodeStandIn, daemon: Daemon) -> Client:
    """A client with its own SuiLedger (its own connection to the node: another full
    node, as far as the stand-in's ``index_lag`` goes), funded by the faucet."""
    identity = HostIdentity.generate()
    node.faucet(identity.sui_address, 10 * SUI)
    return Client(SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0)), identity, daemon)


# -- the data path -------------------------------------------------------------------------


def test_a_tunnel_on_an_open_connection_waits_for_no_transaction(
    node: SuiNodeStandIn, tmp_path: Path
) -> None:
    """Transactions take 0.3 s. The forwarder's first tunnel opens the connection (a
    spending cap and the open: two transactions); then the node stalls -- it takes
    calls and answers none -- and more tunnels go through the open connection all the
    same, paid by receipts off the ledger, with no transaction sent meanwhile. Once it
    answers again, the connection's claim and settlement go through."""
    node.tx_latency = 0.3

    async def main() -> None:
        async with echo_backend() as port:
            provider = write_config(tmp_path, node, "provider", service(port, PAID))
            async with running(provider) as daemon:
                forward = f"""
[[forward]]
name = "svc"
listen = "127.0.0.1:0"
target = "dtp://{daemon.host_id}:7000"
deposit = {DEPOSIT}"""
                async with running(write_config(tmp_path, node, "client", forward)) as client:
                    fwd = client.forwarders["svc"]
                    assert fwd.server is not None
                    address = fwd.server.sockets[0].getsockname()[:2]
                    assert await through(address, b"first") == b"first"
                    sent = node.calls["ExecuteTransaction"]
                    node.stall()
                    try:
                        for i in range(5):
                            data = bytes([i]) * 100_000
                            got = await asyncio.wait_for(through(address, data), BOUND)
                            assert got == data
                    finally:
                        node.unstall()
                    assert node.calls["ExecuteTransaction"] == sent
                    row = client.book.forward("svc")
                    assert row.tunnels == 6 and row.connections == 1 and row.receipts_sent > 0
                paid = client.book.forward("svc").fees_paid
                served = daemon.book.service("svc")
                await until(lambda: served.fees_claimed, "the provider's claim")
                assert served.fees_claimed == served.fees_earned == paid
                assert served.refunded == DEPOSIT - paid

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_a_forwards_open_timeout_bounds_its_ledger_open_too(
    node: SuiNodeStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """The node stalls -- it takes calls and answers none -- as a forward's first
    connection is to open: its ledger work (the Host's read, the spending cap, the
    open) waits on it. The forward's ``open_timeout`` bounds all of it, not only the
    carrier connect and the handshake: the local client is refused (a TCP client's
    connection closed; a UDP flow's open counted as an error) within it, where it
    waited DTP_SUI_TIMEOUT (30 s) per node call, and its retries. Once the node answers
    again, the forward's next connection goes through (the one given up is abandoned
    in the background)."""
    open_timeout = 2.0
    refused_within = open_timeout + 3.0

    async def main() -> None:
        async with provider(tmp_path, node) as daemon:
            forward = f"""
[[forward]]
name = "svc"
listen = "127.0.0.1:0"
target = "dtp://{daemon.host_id}:7000"
deposit = {DEPOSIT}
protocol = "{protocol}"
open_timeout = {open_timeout}"""
            async with running(write_config(tmp_path, node, "client", forward)) as client:
                fwd = client.forwarders["svc"]
                row = client.book.forward("svc")
                node.stall()
                try:
                    started = time.monotonic()
                    if protocol == "tcp":
                        assert isinstance(fwd, Forwarder) and fwd.server is not None
                        address = fwd.server.sockets[0].getsockname()[:2]
                        # refused: closed unanswered (reset, the data unread)
                        with contextlib.suppress(ConnectionResetError):
                            got = await asyncio.wait_for(through(address, b"x"), refused_within)
                            assert got == b""
                    else:
                        assert isinstance(fwd, UdpForward)
                        assert fwd._forwarder is not None
                        await udp_send(fwd._forwarder.address, b"x")
                        await until(lambda: row.errors, "the flow's open given up", refused_within)
                    assert time.monotonic() - started >= open_timeout
                finally:
                    node.unstall()
                said = [f"{r.getMessage()} {r.__dict__.get('fields')}" for r in caplog.records]
                assert [m for m in said if "forward's open_timeout (2 s)" in m]  # (named)
                if protocol == "tcp":
                    await asyncio.sleep(1.0)  # (past the forward's backoff, 0.5 s)
                    assert await asyncio.wait_for(through(address, b"again"), BOUND) == b"again"
                    assert row.connections == 1

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


async def udp_send(address: tuple[str, int], data: bytes) -> None:
    """One datagram to ``address`` from a socket of its own."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=address
    )
    transport.sendto(data)
    transport.close()


# -- read after write across nodes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("grace", "admitted"), [(None, True), (0.2, False)], ids=["default-grace", "short-grace"]
)
def test_the_admission_waits_for_an_open_its_node_does_not_show_yet(
    node: SuiNodeStandIn, tmp_path: Path, grace: float | None, admitted: bool
) -> None:
    """The client's open executed on its own full node; the provider's shows it 1 s
    later. Within the admission's grace (3 s by default on Sui) the provider reads
    again until it finds it, and serves the client; with a grace shorter than the lag
    it refuses an unknown connection."""
    extra = "" if grace is None else f"open_grace = {grace}"

    async def main() -> None:
        async with provider(tmp_path, node, extra=extra) as daemon:
            client = client_of(node, daemon)
            try:
                node.index_lag = 1.0
                cid = await asyncio.to_thread(client.open_ledger, DEPOSIT)
                if admitted:
                    _, writer = await client.connect(cid)
                    assert await tunnel(writer) == b"ping"
                    writer.close()
                else:
                    with pytest.raises(ConnectionRefused, match="unknown connection"):
                        await client.connect(cid)
                assert node.lagged_reads > 0
            finally:
                client.close()

    asyncio.run(asyncio.wait_for(main(), 4 * BOUND))


# -- outages, congestion, gas --------------------------------------------------------------


@pytest.mark.parametrize("outage", ["away", "rate-limiting"])
def test_with_the_node_away_open_connections_go_on_and_new_ones_are_refused(
    node: SuiNodeStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    """The node goes away (or refuses every call as rate limited, past SuiLedger's
    retries): a served connection keeps carrying tunnels; a client connecting on
    another ledger connection is refused at once, saying the ledger cannot be read (not
    left hanging); the Host's refreshes keep the last firewall and say so once. Back,
    that client is served, and both connections are settled: each deposit refunded
    whole (a free service)."""
    caplog.set_level(logging.INFO, logger="dtp.daemon")

    def begin() -> None:
        if outage == "away":
            node.go_away()
        else:
            node.rate_limit = 0  # (no call a second)

    def end() -> None:
        if outage == "away":
            node.come_back()
        else:
            node.rate_limit = None

    async def main() -> None:
        async with provider(tmp_path, node) as daemon:
            client = client_of(node, daemon)
            try:
                first = await asyncio.to_thread(client.open_ledger, DEPOSIT)
                second = await asyncio.to_thread(client.open_ledger, DEPOSIT)
                _, writer = await client.connect(first)
                assert await tunnel(writer) == b"ping"
                await asyncio.to_thread(begin)
                await until(lambda: "cannot read the host" in caplog.text, "the refresh failing")
                assert await tunnel(writer, b"still") == b"still"
                started = time.monotonic()
                with pytest.raises(ConnectionRefused, match="cannot check the connection"):
                    await client.connect(second)
                assert time.monotonic() - started < BOUND
                await asyncio.sleep(2 * host_policy_mod.POLICY_REFRESH)
                assert caplog.text.count("cannot read the host") == 1
                assert await tunnel(writer, b"again") == b"again"
                writer.close()
                await asyncio.to_thread(end)
                _, again = await client.connect(second)
                assert await tunnel(again) == b"ping"
                again.close()
                row = daemon.book.service("svc")
                await until(lambda: row.refunded == 2 * DEPOSIT, "both refunds")
                for cid in (first, second):
                    escrow = settled_escrow(client.ledger, cid)
                    assert escrow.settled and escrow.refunded == DEPOSIT
            finally:
                client.close()

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


def test_transactions_cancelled_for_congestion_are_sent_again(
    node: SuiNodeStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sui's congestion control cancels a transaction more times than SuiLedger sends
    it (SharedObjectCongestion): the daemon takes it for a passing outage. Its start's
    service publication is sent again and the daemon starts; a settlement is tried
    again, and the connection is settled, its deposit refunded whole."""
    monkeypatch.setattr(settlements_mod, "SETTLE_RETRY", 0.2)
    monkeypatch.setattr(host_setup_mod, "SYNC_PAUSE", 0.01)
    caplog.set_level(logging.INFO, logger="dtp.daemon")
    node.cancel_next(6)  # (one try and five more: SuiLedger's) of the service's publication

    async def main() -> None:
        async with provider(tmp_path, node) as daemon:
            assert "the host's set-up was cancelled for congestion" in caplog.text
            assert daemon.host_id is not None
            host = await asyncio.to_thread(daemon.ledger.get_host, daemon.host_id)
            assert 7000 in host.services
            client = client_of(node, daemon)
            try:
                cid = await asyncio.to_thread(client.open_ledger, DEPOSIT)
                _, writer = await client.connect(cid)
                assert await tunnel(writer) == b"ping"
                node.cancel_next(6)  # (one try and five more: SuiLedger's)
                writer.close()
                services = daemon.services
                assert services is not None
                await until(lambda: cid in services.settlements.retries, "the settlement failing")
                row = daemon.book.service("svc")
                await until(lambda: row.refunded == DEPOSIT, "the settlement tried again")
                tc = client.ledger.get_connection(cid)
                assert tc.settled and not services.settlements.retries
            finally:
                client.close()

    asyncio.run(asyncio.wait_for(main(), 4 * BOUND))


def test_running_out_of_gas_is_said_once_and_settlements_wait_for_funds(
    node: SuiNodeStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The provider's gas runs out (its coins spent elsewhere) while two connections
    are served: they go on; as they end their settlements fail, and the daemon says so
    once -- an InsufficientFunds named InsufficientGas -- not once per connection, its
    status showing it. Funded again, both are settled at once, the deposits refunded:
    the gas watch's next read (every GAS_CHECK_OUT, 5 s, while out) wakes them, where
    they waited out their backoff (SETTLE_RETRY, 30 s, and up) -- the Host's reads,
    whose coming back after an outage also wakes them, never failed. (The real
    backoff: with it shortened, the settlements went through without the wake.)"""
    caplog.set_level(logging.DEBUG, logger="dtp.daemon")
    monkeypatch.setattr(gas_mod, "GAS_CHECK", 0.2)  # (the watch sees the coins go soon)
    woken_within = gas_mod.GAS_CHECK_OUT + 5.0
    assert woken_within < settlements_mod.SETTLE_RETRY  # (or the backoff could do it)

    async def main() -> None:
        async with provider(tmp_path, node, funds=2 * SUI) as daemon:
            assert daemon.gas.state == "low"  # 2 SUI: under 100 budgets of 0.05
            budget = daemon.gas.budget
            client = client_of(node, daemon)
            # the provider's key, used elsewhere: its coins go into a sponsor pool
            spender = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
            try:
                cids = [await asyncio.to_thread(client.open_ledger, DEPOSIT) for _ in range(2)]
                writers = [(await client.connect(cid))[1] for cid in cids]
                me = daemon.identity
                pool = await asyncio.to_thread(
                    spender.create_sponsor_pool,
                    me,
                    daemon.host_id,
                    7000,
                    1000,
                    max_pledge=10**9,
                    lanes=1,  # (one funding transaction: it spends all but the budget)
                )
                left = await asyncio.to_thread(spender.gas_balance, me.sui_address)
                await asyncio.to_thread(spender.fund_sponsor_pool, me, pool, left - budget - 1)
                await until(lambda: daemon.gas.out, "the gas watch seeing it")
                for writer in writers:
                    assert await tunnel(writer) == b"ping"  # served all the same
                    writer.close()
                services = daemon.services
                assert services is not None
                await until(
                    lambda: len(services.settlements.retries) == 2, "both settlements failing"
                )
                status = daemon.book.to_json()["gas"]
                assert status["state"] == "out" and status["balance"] < budget
                assert services.policy.ledger_away is None  # (the Host was read all along)
                node.faucet(me.sui_address, 10 * SUI)
                row = daemon.book.service("svc")
                await until(lambda: row.refunded == 2 * DEPOSIT, "both settled", woken_within)
                assert not services.settlements.retries
            finally:
                spender.close()
                client.close()

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said.count(("ERROR", "out of gas")) == 1
    assert ("INFO", "gas funded again") in said
    # each connection's failure at debug level: the gas watch said why, once
    assert not [m for level, m in said if level == "WARNING" and "settlement failed" in m]
    assert [m for level, m in said if level == "DEBUG" and "settlement failed" in m]
