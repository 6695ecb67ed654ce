"""The services daemon on Sui: in-process daemons whose ``ledger`` is the Sui node
stand-in (tests/sui_node, in this process too), with what a network does that the
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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.daemon.gas as gas_mod
import dtp.daemon.runner as runner_mod
import dtp.daemon.services as services_mod
from dtp.chain import sui, sui_client
from dtp.chain.sui import SuiConfig, SuiLedger
from dtp.connection import ConnectionConfig
from dtp.daemon.config import load_config
from dtp.daemon.runner import Daemon
from dtp.daemon.tunnel import read_status
from dtp.errors import ConnectionRefused
from dtp.keys import HostIdentity
from tests.sui_node import SuiNodeStandIn

SUI = 1_000_000_000
DEPOSIT = 20_000_000
BOUND = 20.0  # seconds: generous bounds on waits that take well under one


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs in milliseconds rather than seconds (the node's answers are local)."""
    monkeypatch.setattr(sui_client, "_RETRY_DELAY", 0.001)
    monkeypatch.setattr(sui_client, "_RATE_LIMITED_DELAY", 0.001)
    monkeypatch.setattr(sui, "_CONGESTION_DELAY", 0.001)


@pytest.fixture
def node() -> Any:
    with SuiNodeStandIn() as stand_in:  # (epochs of a day, as on a network)
        yield stand_in
        stand_in.state.check()


def write_config(
    tmp: Path, node: SuiNodeStandIn, name: str, body: str, extra: str = "", funds: int = 10 * SUI
) -> Path:
    """A daemon config on the stand-in, its identity funded by the node's faucet."""
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
async def echo_backend() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[Daemon]:
    """A started daemon, drained at the end."""
    daemon = Daemon(load_config(config))
    try:
        await daemon.start()
        yield daemon
    finally:
        await asyncio.wait_for(daemon.drain(), 4 * BOUND)


@contextlib.asynccontextmanager
async def provider(
    tmp: Path, node: SuiNodeStandIn, service_extra: str = "", **options: Any
) -> AsyncIterator[Daemon]:
    """A started provider daemon serving an echo backend as port 7000."""
    async with echo_backend() as port:
        config = write_config(tmp, node, "provider", service(port, service_extra), **options)
        async with running(config) as daemon:
            yield daemon


async def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + BOUND
    while not (value := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)
    return value


async def through(address: tuple[str, int], data: bytes) -> bytes:
    """One TCP client of a forwarder: ``data`` there and its echo back."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


class Client:
    """A client with its own SuiLedger (its own connection to the node: another full
    node, as far as the stand-in's ``index_lag`` goes), opening ledger connections and
    connecting on them as any client of a host may."""

    def __init__(self, node: SuiNodeStandIn, daemon: Daemon) -> None:
        self.identity = HostIdentity.generate()
        node.faucet(self.identity.sui_address, 10 * SUI)
        self.ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        assert daemon.host_id is not None and daemon.endpoint is not None
        self.host_id = daemon.host_id
        self.endpoint = daemon.endpoint
        self.server_key = daemon.identity.noise_public

    def open_ledger(self) -> str:
        cap = self.ledger.create_spending_cap(self.identity, DEPOSIT)
        return self.ledger.open_connection(
            self.identity, self.host_id, 7000, cap, DEPOSIT
        ).connection_id

    async def connect(self, cid: str) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
        config = ConnectionConfig(
            identity=self.identity,
            is_client=True,
            connection_id=bytes.fromhex(cid[2:]),
            port=7000,
        )
        return await dtp.aio.open_connection(
            *self.endpoint, identity=self.identity, server_key=self.server_key, config=config
        )

    def close(self) -> None:
        self.ledger.close()


async def tunnel(writer: dtp.aio.DTPStreamWriter, payload: bytes = b"ping") -> bytes:
    reader, stream = await writer.open_stream()
    await read_status(reader)
    stream.write(payload)
    stream.write_eof()
    return await reader.read()


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
            client = Client(node, daemon)
            try:
                node.index_lag = 1.0
                cid = await asyncio.to_thread(client.open_ledger)
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
            client = Client(node, daemon)
            try:
                first = await asyncio.to_thread(client.open_ledger)
                second = await asyncio.to_thread(client.open_ledger)
                _, writer = await client.connect(first)
                assert await tunnel(writer) == b"ping"
                await asyncio.to_thread(begin)
                await until(lambda: "cannot read the host" in caplog.text, "the refresh failing")
                assert await tunnel(writer, b"still") == b"still"
                started = time.monotonic()
                with pytest.raises(ConnectionRefused, match="cannot check the connection"):
                    await client.connect(second)
                assert time.monotonic() - started < BOUND
                await asyncio.sleep(2 * services_mod.POLICY_REFRESH)
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
                    escrow = client.ledger.get_escrow(client.ledger.get_connection(cid).escrow)
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
    monkeypatch.setattr(services_mod, "SETTLE_RETRY", 0.2)
    monkeypatch.setattr(runner_mod, "SYNC_PAUSE", 0.01)
    caplog.set_level(logging.INFO, logger="dtp.daemon")
    node.cancel_next(6)  # (one try and five more: SuiLedger's) of the service's publication

    async def main() -> None:
        async with provider(tmp_path, node) as daemon:
            assert "the host's set-up was cancelled for congestion" in caplog.text
            assert daemon.host_id is not None
            host = await asyncio.to_thread(daemon.ledger.get_host, daemon.host_id)
            assert 7000 in host.services
            client = Client(node, daemon)
            try:
                cid = await asyncio.to_thread(client.open_ledger)
                _, writer = await client.connect(cid)
                assert await tunnel(writer) == b"ping"
                node.cancel_next(6)  # (one try and five more: SuiLedger's)
                writer.close()
                services = daemon.services
                assert services is not None
                await until(lambda: cid in services._retries, "the settlement failing")
                row = daemon.book.service("svc")
                await until(lambda: row.refunded == DEPOSIT, "the settlement tried again")
                tc = client.ledger.get_connection(cid)
                assert tc.settled and not services._retries
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
    status showing it. Funded again, both are settled, the deposits refunded."""
    caplog.set_level(logging.DEBUG, logger="dtp.daemon")
    monkeypatch.setattr(services_mod, "SETTLE_RETRY", 0.3)
    monkeypatch.setattr(services_mod, "SETTLE_RETRY_MAX", 0.3)
    monkeypatch.setattr(gas_mod, "GAS_CHECK", 0.2)
    monkeypatch.setattr(gas_mod, "GAS_CHECK_OUT", 0.2)

    async def main() -> None:
        async with provider(tmp_path, node, funds=2 * SUI) as daemon:
            assert daemon.gas.state == "low"  # 2 SUI: under 100 budgets of 0.05
            budget = daemon.gas.budget
            client = Client(node, daemon)
            # the provider's key, used elsewhere: its coins go into a sponsor pool
            spender = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
            try:
                cids = [await asyncio.to_thread(client.open_ledger) for _ in range(2)]
                writers = [(await client.connect(cid))[1] for cid in cids]
                me = daemon.identity
                pool = await asyncio.to_thread(
                    spender.create_sponsor_pool, me, daemon.host_id, 7000, 1000
                )
                left = await asyncio.to_thread(spender.gas_balance, me.sui_address)
                await asyncio.to_thread(spender.fund_sponsor_pool, me, pool, left - budget - 1)
                await until(lambda: daemon.gas.out, "the gas watch seeing it")
                for writer in writers:
                    assert await tunnel(writer) == b"ping"  # served all the same
                    writer.close()
                services = daemon.services
                assert services is not None
                await until(lambda: len(services._retries) == 2, "both settlements failing")
                await asyncio.sleep(1.0)  # (tried again, and failing, meanwhile)
                status = daemon.book.to_json()["gas"]
                assert status["state"] == "out" and status["balance"] < budget
                node.faucet(me.sui_address, 10 * SUI)
                row = daemon.book.service("svc")
                await until(lambda: row.refunded == 2 * DEPOSIT, "both settled")
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
