"""The services daemon's connection limits (docs/escrow.md §2, docs/daemon.md): the
Host's ``max_connections_per_client`` (a client's connections to the host, over all its
services) and a service's ``max_connections``, enforced by the daemon's admission over
the DTP connections it serves at that moment -- the ledger counts none. A connection
beyond a limit is refused at its handshake (``ConnectionLimitReached`` at the client)
and, funded and valid on the ledger, settled at once: its client's deposit comes back
whole without waiting out the half-close timeout. A connection counts until it ends,
not until its settlement (three transactions on Sui) is done.

In-process daemons on a LocalLedger file and on the Sui node stand-in, real DTP
connections on 127.0.0.1 to a real echo backend; the clients open their ledger
connections themselves and connect on them, as any client of a host may."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._runner import Daemon
from dtp.errors import ConnectionLimitReached, ConnectionRefused
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui import _client as sui_client
from dtp.ledger.sui import _ledger as sui_core
from dtp.testing.sui_node import SuiNodeStandIn
from tests.daemon.inproc import BOUND, Client, echo_backend, running, tunnel, until

SUI = 1_000_000_000
DEPOSIT = 20_000_000
A, B, U = 7000, 7001, 7002  # the services' ports: two TCP ones, a UDP one


class Ledgers:
    """Where a test's daemon and clients meet: a LocalLedger file, or the stand-in."""

    def __init__(self, tmp: Path, node: SuiNodeStandIn | None) -> None:
        self.tmp = tmp
        self.node = node

    @property
    def lines(self) -> str:
        """The ``[daemon]`` lines naming the ledger."""
        if self.node is None:
            return f'ledger = "{self.tmp / "ledger.sqlite"}"\nfaucet = {10 * SUI}'
        # (every end settled, whatever its gas: these tests follow the refunds of the
        # connections refused at a limit; on Sui such an end is left to its client by
        # default, tests/daemon/test_end_gas.py)
        return (
            f'ledger = "localnet@{self.node.url}"\nsui_package = "{self.node.package_id}"\n'
            "gas_aware_ends = false"
        )

    def fund(self, address: str) -> None:
        if self.node is None:
            ledger = LocalLedger(self.tmp / "ledger.sqlite")
            try:
                ledger.faucet(address, 10 * SUI)
            finally:
                ledger.close()
        else:
            self.node.faucet(address, 10 * SUI)

    def open(self) -> Ledger:
        if self.node is None:
            return LocalLedger(self.tmp / "ledger.sqlite")
        return SuiLedger(SuiConfig(self.node.url, self.node.package_id, timeout=30.0))

    def client(self, daemon: Daemon) -> Client:
        identity = HostIdentity.generate()
        self.fund(identity.sui_address)
        return Client(self.open(), identity, daemon)


@pytest.fixture(params=["local", "sui"])
def ledgers(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Ledgers]:
    if request.param == "local":
        yield Ledgers(tmp_path, None)
        return
    # (backoffs in milliseconds: the node's answers are local)
    monkeypatch.setattr(sui_client, "_RETRY_DELAY", 0.001)
    monkeypatch.setattr(sui_core, "_CONGESTION_DELAY", 0.001)
    with SuiNodeStandIn() as node:
        yield Ledgers(tmp_path, node)
        node.state.check()


@contextlib.asynccontextmanager
async def provider(
    ledgers: Ledgers, per_client: int = 0, per_service_a: int = 0
) -> AsyncIterator[Daemon]:
    """A started daemon serving an echo backend as services ``a`` (port A, at most
    ``per_service_a`` connections) and ``b`` (port B), and a UDP backend as service
    ``u`` (port U), the Host allowing each client ``per_client`` connections (0:
    unlimited)."""
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    udp_backend = udp.get_extra_info("sockname")[1]
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(udp.close)
        backend = await stack.enter_async_context(echo_backend())
        identity = HostIdentity.generate()
        identity.save(ledgers.tmp / "provider.key")
        if ledgers.node is not None:
            ledgers.node.faucet(identity.sui_address, 10 * SUI)
        config = ledgers.tmp / "provider.toml"
        config.write_text(
            f"""[daemon]
{ledgers.lines}
identity = "provider.key"
state_dir = "provider-state"
drain_timeout = 2

[firewall]
max_connections_per_client = {per_client}

[[service]]
name = "a"
port = {A}
backends = ["127.0.0.1:{backend}"]
health_interval = 30
max_connections = {per_service_a}

[[service]]
name = "b"
port = {B}
backends = ["127.0.0.1:{backend}"]
health_interval = 30

[[service]]
name = "u"
port = {U}
protocol = "udp"
backends = ["127.0.0.1:{udp_backend}"]
"""
        )
        async with running(config) as daemon:
            yield daemon


async def served(client: Client, port: int) -> tuple[str, Any]:
    """A new ledger connection of ``client`` to ``port`` and a DTP connection on it,
    admitted, and checked to carry a tunnel when ``port`` is a TCP service's: (its ID,
    its writer)."""
    cid = await asyncio.to_thread(client.open_ledger, DEPOSIT, port)
    _, writer = await client.connect(cid, port)
    if port != U:
        assert await tunnel(writer) == b"ping"
    return cid, writer


async def refused(client: Client, port: int) -> tuple[str, ConnectionLimitReached]:
    """A new ledger connection of ``client`` to ``port``, its DTP connection refused at
    a limit: (its ID, the error)."""
    cid = await asyncio.to_thread(client.open_ledger, DEPOSIT, port)
    with pytest.raises(ConnectionLimitReached) as info:
        await client.connect(cid, port)
    return cid, info.value


def run(ledgers: Ledgers, main: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


def test_the_per_client_limit_counts_a_clients_connections_to_every_service(
    ledgers: Ledgers,
) -> None:
    """One connection per client: a client served by service a is refused by service b
    (the limit is the host's, over its services), naming the limit; another client is
    served by b meanwhile; once the first connection ends, the client is served by b."""

    async def main() -> None:
        async with provider(ledgers, per_client=1) as daemon:
            alice, bob = ledgers.client(daemon), ledgers.client(daemon)
            try:
                _, first = await served(alice, A)
                _, error = await refused(alice, B)
                assert f"{alice.address} already has 1 of 1 connections" in str(error)
                _, bobs = await served(bob, B)  # (alice's count is hers alone)
                first.close()
                row = daemon.book.service("a")
                await until(lambda: row.refunded == DEPOSIT, "the first connection settled")
                _, again = await served(alice, B)
                again.close()
                bobs.close()
                assert daemon.book.service("b").denials == 1
            finally:
                alice.close()
                bob.close()

    run(ledgers, main)


def test_the_per_service_limit_counts_every_clients_connections(ledgers: Ledgers) -> None:
    """Service a takes one connection at a time: a second client is refused there,
    naming the limit, and served by service b (which has none); once a's connection
    ends, the second client is served by a."""

    async def main() -> None:
        async with provider(ledgers, per_service_a=1) as daemon:
            alice, bob = ledgers.client(daemon), ledgers.client(daemon)
            try:
                _, first = await served(alice, A)
                _, error = await refused(bob, A)
                assert f"port {A} of host {daemon.host_id} serves 1 of 1 connections" in str(error)
                _, bobs = await served(bob, B)
                first.close()
                row = daemon.book.service("a")
                # (bob's refused connection refunded, and alice's first settled)
                await until(lambda: row.refunded == 2 * DEPOSIT, "both settled")
                _, again = await served(bob, A)
                again.close()
                bobs.close()
                assert row.denials == 1
            finally:
                alice.close()
                bob.close()

    run(ledgers, main)


def test_a_connection_refused_at_a_limit_is_refunded_at_once(ledgers: Ledgers) -> None:
    """The refused connection is valid and funded on the ledger: the daemon closes and
    settles it as it refuses it -- the client's deposit comes back whole now, not after
    the half-close timeout -- and counts the refund and the denial in the status."""

    async def main() -> None:
        async with provider(ledgers, per_client=1) as daemon:
            alice = ledgers.client(daemon)
            try:
                _, first = await served(alice, A)
                cid, _ = await refused(alice, B)
                row = daemon.book.service("b")
                await until(lambda: row.refunded == DEPOSIT, "the refund")
                tc = await asyncio.to_thread(alice.ledger.get_connection, cid)
                assert tc.state == ConnectionState.CLOSED and tc.settled
                escrow = await asyncio.to_thread(alice.ledger.get_escrow, tc.escrow)
                assert escrow.settled and escrow.refunded == DEPOSIT and escrow.claimed == 0
                assert row.denials == 1 and row.fees_claimed == 0
                first.close()
            finally:
                alice.close()

    run(ledgers, main)


@pytest.mark.parametrize("port", [A, U], ids=["tcp", "udp"])
def test_a_client_reconnecting_while_its_last_connection_settles_is_served(
    ledgers: Ledgers, monkeypatch: pytest.MonkeyPatch, port: int
) -> None:
    """One connection per client; the client closes its connection (a TCP service's,
    or a UDP service's flow) and opens another at once, while the first one's
    settlement is still on its way (held here at its transaction: on Sui it takes
    seconds; minutes against a stalled node). The first no longer counts: the
    second is served (it was refused as over the limit, its deposit locked, a refund
    paid from the host's gas). A DTP connection on the first ledger connection is
    still refused meanwhile -- one per ledger connection, until its settlement is done
    -- and that settlement goes through once let go."""

    async def main() -> None:
        async with provider(ledgers, per_client=1) as daemon:
            alice = ledgers.client(daemon)
            go = threading.Event()
            held = threading.Event()
            real_settle = daemon.ledger.settle

            def settle_held(*args: Any, **kwargs: Any) -> Any:
                held.set()
                go.wait(BOUND)
                return real_settle(*args, **kwargs)

            # (a free connection's settlement: one transaction, which closes it too)
            monkeypatch.setattr(daemon.ledger, "settle", settle_held)
            try:
                first_cid, first = await served(alice, port)
                first.close()
                await until(held.is_set, "the first connection's settlement under way")
                _, second = await served(alice, B)
                with pytest.raises(ConnectionRefused, match="being settled"):
                    await alice.connect(first_cid, port)
                services = daemon.services
                assert services is not None and first_cid in services._served
                go.set()
                row = daemon.book.service("a" if port == A else "u")
                await until(lambda: row.refunded == DEPOSIT, "the first connection settled")
                tc = await asyncio.to_thread(alice.ledger.get_connection, first_cid)
                assert tc.settled
                await until(lambda: first_cid not in services._served, "its ID given back")
                second.close()
            finally:
                go.set()
                alice.close()

    run(ledgers, main)
