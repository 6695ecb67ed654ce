"""The payment models on real connections: connecting by host ID with a subscription
(unmetered) or through a sponsor pool (the provider pays its share), against a paid
server (dtp.socket.serve) on a LocalLedger file, and on Sui (the node stand-in, gas
accounted); MIST conserved throughout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import SubscriptionExpired, WrongSubscription
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=50_000)
PORT = 8080
GAS = 10**10
"""MIST each identity gets for gas on Sui, besides what a test gives it."""


@dataclass
class World:
    ledger: Ledger
    provider: HostIdentity
    client: HostIdentity
    host: str
    server: PaidServer
    node: SuiNodeStandIn | None = None
    """The Sui node stand-in, when the world is on Sui (else a LocalLedger file)."""

    @property
    def address(self) -> str:
        return f"dtp://{self.host}:{PORT}"

    def fund(self, address: str, mist: int) -> None:
        if self.node is not None:
            self.node.faucet(address, mist)
        else:
            assert isinstance(self.ledger, LocalLedger)
            self.ledger.faucet(address, mist)

    def next_epoch(self) -> None:
        if self.node is not None:
            self.node.advance_epoch()
        else:
            assert isinstance(self.ledger, LocalLedger)
            self.ledger.advance_epoch()

    def balance(self, address: str) -> int:
        """What ``address`` holds, its gas paid on Sui added back: what the payment
        models moved, alone."""
        gas = self.node.gas_paid(address) if self.node is not None else 0
        return self.ledger.balance(address) + gas

    def conserved(self) -> bool:
        if self.node is not None:
            a = self.node.audit()
            return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"] + a["gas"]
        assert isinstance(self.ledger, LocalLedger)
        a = self.ledger.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]

    def settled(self, connection_id: str) -> None:
        deadline = time.monotonic() + 10
        while not is_settled(self.ledger, connection_id):
            assert time.monotonic() < deadline, "the server did not settle"
            time.sleep(0.02)


def echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """The provider's paid echo service on a LocalLedger file, or with the parameter
    ``"sui"`` on the Sui node stand-in."""
    with contextlib.ExitStack() as stack:
        node: SuiNodeStandIn | None = None
        ledger: Ledger
        if getattr(request, "param", "local") == "sui":
            node = stack.enter_context(SuiNodeStandIn())

            def open_ledger() -> Ledger:
                assert node is not None
                return SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))

            funds = GAS
        else:

            def open_ledger() -> Ledger:
                return LocalLedger(tmp_path / "ledger.db")

            funds = 1_000_000
        ledger = open_ledger()
        stack.callback(ledger.close)
        provider, client = HostIdentity.generate(), HostIdentity.generate()
        for identity in (provider, client):
            if node is not None:
                node.faucet(identity.sui_address, funds)
            else:
                assert isinstance(ledger, LocalLedger)
                ledger.faucet(identity.sui_address, funds)
        host = ledger.create_host(provider, provider.noise_public)
        ledger.add_service(provider, host, PORT, "echo", SLA)
        server = dtp.socket.serve(
            host,
            PORT,
            echo,
            # on Sui one SuiLedger for both: the provider signs on each, and two gas
            # pools of one signer pick the same coin (docs/sui.md, "Gas")
            ledger=open_ledger() if node is None else ledger,
            identity=provider,
            receipts=tmp_path / "receipts.db",
            # every end settled, whatever its gas: these tests follow the payment
            # models' money through the settlement (the gas rule's own tests are
            # tests/paid/test_end_gas_on_sui.py)
            policy=ServicePolicy(gas_aware_ends=False),
        )
        yield World(ledger, provider, client, host, server, node)
        server.close()


def _transfer(sock: dtp.socket.DTPSocket, size: int) -> None:
    data = b"x" * size
    sock.sendall(data)
    got = 0
    while got < size:
        got += len(sock.recv(65536))


@pytest.mark.parametrize("world", ["local", "sui"], indirect=True)
def test_subscription_connects_unmetered_and_costs_no_escrow(world: World) -> None:
    ledger, client = world.ledger, world.client
    offer = ledger.create_subscription_offer(world.provider, world.host, PORT, 1_000)
    sub = ledger.subscribe(client, offer, epochs=2)
    before = world.balance(client.sui_address)
    with dtp.socket.create_connection(
        world.address, ledger=ledger, identity=client, subscription=sub, timeout=10
    ) as sock:
        assert sock.connection_id is not None
        tc = ledger.get_connection(sock.connection_id)
        assert tc.sla == Sla(0, 0, 0)  # unmetered: 1 MiB below costs nothing
        _transfer(sock, 1 << 20)
        connection_id = sock.connection_id
    world.settled(connection_id)
    escrow = settled_escrow(ledger, connection_id)
    assert escrow.deposited == 0 and escrow.claimed == 0
    # only the subscription cost money (paid before), and the spending cap's creation none
    assert world.balance(client.sui_address) == before

    # asyncio too
    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            world.address, ledger=ledger, identity=client, subscription=sub, timeout=10
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())
    # an expired subscription is refused before any money moves
    world.next_epoch()
    world.next_epoch()
    with pytest.raises(SubscriptionExpired):
        dtp.socket.create_connection(
            world.address, ledger=ledger, identity=client, subscription=sub, timeout=10
        )
    assert world.balance(client.sui_address) == before
    # someone else's subscription, or one for another service: a clear ValueError, and
    # a typed one (dtp.errors, named as the ledger would refuse it)
    other = HostIdentity.generate()
    world.fund(other.sui_address, 10_000)
    with pytest.raises(WrongSubscription, match="belongs to") as wrong:
        dtp.socket.create_connection(
            world.address, ledger=ledger, identity=other, subscription=sub, timeout=10
        )
    assert isinstance(wrong.value, ValueError) and wrong.value.name == "ENotHolder"
    with pytest.raises(ValueError, match="either"):
        dtp.socket.create_connection(
            world.address, ledger=ledger, identity=client, subscription=sub, sponsor_pool=sub
        )
    assert world.conserved()


@pytest.mark.parametrize("world", ["local", "sui"], indirect=True)
def test_sponsored_connection_provider_pays_its_share(world: World) -> None:
    ledger, client, provider = world.ledger, world.client, world.provider
    pool = ledger.create_sponsor_pool(
        provider, world.host, PORT, share_bps=2_500, max_pledge=10**9, lanes=2
    )
    ledger.fund_sponsor_pool(provider, pool, 100_000)  # 50 000 in each lane
    before = world.balance(client.sui_address)
    with dtp.socket.create_connection(
        world.address,
        ledger=ledger,
        identity=client,
        deposit=60_000,
        sponsor_pool=pool,
        timeout=10,
    ) as sock:
        assert sock.connection_id is not None
        _transfer(sock, 256 << 10)
        connection_id = sock.connection_id
    world.settled(connection_id)
    escrow = settled_escrow(ledger, connection_id)
    fee_paid = escrow.claimed
    assert fee_paid > 0  # 512 KiB both ways at 10 MIST/KiB
    client_part, provider_part = ledger.get_sponsor_pool(pool).quote(fee_paid)
    back = ledger.reimburse(client, pool, connection_id)
    assert back == provider_part and client_part + provider_part == fee_paid
    assert world.balance(client.sui_address) == before - client_part
    # a pool for another port is refused early
    ledger.add_service(provider, world.host, PORT + 1, "echo", SLA)
    other = ledger.create_sponsor_pool(
        provider, world.host, PORT + 1, share_bps=5_000, max_pledge=10**9
    )
    with pytest.raises(ValueError, match="not for"):
        dtp.socket.create_connection(
            world.address, ledger=ledger, identity=client, sponsor_pool=other, timeout=10
        )
    assert world.conserved()


def test_a_cancelled_asyncio_connect_abandons_the_connection_it_opened(
    world: World, tmp_path: Path
) -> None:
    """Paying through a sponsor pool, the open happens while the connect prepares, in a
    worker thread that a cancel cannot stop. A connect cancelled then (wait_for) does not
    leave that connection Open, its deposit and the pool's pledge locked and its ID
    unknown to the caller: it is half-closed once the open lands, so the refund can
    follow."""
    ledger, client, provider = world.ledger, world.client, world.provider
    pool = ledger.create_sponsor_pool(
        provider, world.host, PORT, share_bps=2_500, max_pledge=10**9, lanes=2
    )
    ledger.fund_sponsor_pool(provider, pool, 100_000)  # 50 000 in each lane

    class SlowLedger(LocalLedger):
        def open_sponsored_connection(self, *args: Any, **kw: Any) -> Any:
            opened = super().open_sponsored_connection(*args, **kw)
            time.sleep(0.5)  # the effects come back slowly (a busy node)
            return opened

    slow = SlowLedger(tmp_path / "ledger.db")

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                dtp.aio.open_connection(
                    world.address,
                    ledger=slow,
                    identity=client,
                    deposit=60_000,
                    sponsor_pool=pool,
                    timeout=10,
                ),
                0.2,
            )

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 10
        while True:
            halves, _ = ledger.events(filter=EventFilter(type="ConnectionHalfClosed"))
            if halves:
                break
            assert time.monotonic() < deadline, "the opened connection was not half-closed"
            time.sleep(0.05)
        opened, _ = ledger.events(filter=EventFilter(type="ConnectionOpened"))
        assert len(opened) == len(halves) == 1
        assert world.conserved()
    finally:
        slow.close()
