"""A subscription offer sold with its host (docs/escrow.md §13): once its provider is
no longer the host's authority the offer earns nothing, so the new authority's paid
server serves none of its connections. One being served is closed at the next ledger
check (``CLOSE_SUBSCRIPTION_ENDED``, raised as :class:`~dtp.errors.SubscriptionEnded`)
and ended: the server withdraws the offer (anyone may, after a sale) and ends the
connection (``subscription::end_connection``), paying the gas of both; one that comes
to it after the sale is refused at its handshake, the offer withdrawn first, so that
its client ends it at once. The old authority keeps the epochs begun up to the
withdrawal, the holder takes back the rest, to the MIST, on a LocalLedger and on the
Sui node stand-in (where the gas is counted too); and a new open with the sold offer is
refused before any transaction.

The new authority's server answers the host before the sale here (the host publishes
its Noise key), so that the sale finds a subscribed connection being served by it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import (
    PaymentModelError,
)
from dtp.hostid._admission import LedgerAdmission, PeerInfo
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.settlements import is_settled, settled_escrow
from tests.support.subscribed import served_free, until_ended

OLD, NEW, CLIENT = ident(0xB1), ident(0xB2), ident(0xB3)
PORT = 7094
SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=50_000)
POLICY = ServicePolicy(refresh_interval=0.05, ledger_check_interval=0.1)
PRICE = 1_000  # MIST an epoch
EPOCHS = 5
FUNDS = 10**10


@dataclass
class World:
    """A ledger (a LocalLedger file, or the Sui node stand-in) where OLD's host, which
    answers with NEW's Noise key, offers PORT by subscription at PRICE an epoch."""

    ledger: Ledger
    node: SuiNodeStandIn | None
    tmp: Path
    host: str = ""
    offer: str = ""
    sub: str = ""
    address: tuple[str, int] = ("127.0.0.1", 0)
    """Where NEW's server listens: published by OLD already, so that the server,
    which publishes its endpoint and key where they differ, has nothing to publish."""

    def handle(self) -> Ledger:
        """Another handle on the same ledger (a server's, as in another process)."""
        if self.node is None:
            assert isinstance(self.ledger, LocalLedger)
            return LocalLedger(self.ledger.path)
        return SuiLedger(SuiConfig(self.node.url, self.node.package_id, timeout=30.0))

    def advance_epoch(self) -> None:
        if self.node is None:
            assert isinstance(self.ledger, LocalLedger)
            self.ledger.advance_epoch()
        else:
            self.node.advance_epoch()

    def gas(self, identity: HostIdentity) -> int:
        """The gas ``identity`` paid so far (none on a LocalLedger)."""
        return 0 if self.node is None else self.node.gas_paid(identity.sui_address)

    def conserved(self) -> bool:
        """Every MIST minted is held by someone (or paid as gas), to the MIST."""
        if self.node is None:
            assert isinstance(self.ledger, LocalLedger)
            audit = self.ledger.audit()
            gas = 0
        else:
            audit = self.node.audit()
            gas = audit["gas"]
        held = audit["balances"] + audit["escrows"] + audit["broadcasts"] + gas
        return bool(audit["minted"] == held)


@contextlib.contextmanager
def _world(tmp_path: Path, on: str) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        node = None
        if on == "sui":
            node = stack.enter_context(SuiNodeStandIn(clock_ms=1_000_000))
            for who in (OLD, NEW, CLIENT):
                node.faucet(who.sui_address, FUNDS)
            ledger: Ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        else:
            local = LocalLedger(tmp_path / "ledger.db")
            for who in (OLD, NEW, CLIENT):
                local.faucet(who.sui_address, FUNDS)
            ledger = local
        stack.callback(ledger.close)
        world = World(ledger, node, tmp_path)
        world.address = ("127.0.0.1", free_port())
        world.host = ledger.create_host(
            OLD, NEW.noise_public, ["tcp://{}:{}".format(*world.address)]
        )
        ledger.add_service(OLD, world.host, PORT, "echo", SLA)
        world.offer = ledger.create_subscription_offer(OLD, world.host, PORT, PRICE)
        yield world
        if node is not None:
            node.state.check()


Serve = Callable[[World, Ledger], AbstractContextManager[Any]]


def _echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def _options(world: World) -> dict[str, Any]:
    """How NEW's server serves the host: with its identity, at the address published."""
    return {
        "identity": NEW,
        "policy": POLICY,
        "receipts": world.tmp / "receipts.db",
        "address": world.address,
    }


@contextlib.contextmanager
def _blocking(world: World, ledger: Ledger) -> Iterator[Any]:
    with dtp.socket.serve(world.host, PORT, _echo, ledger=ledger, **_options(world)) as server:
        yield server


def _sold_while_served(world: World, serve: Serve) -> None:
    """CLIENT's subscribed connection, served by NEW's server, as OLD sells the host to
    NEW in epoch 1: ended by NEW's server, the offer withdrawn in epoch 1; OLD claims
    epochs 0 and 1, CLIENT takes back the other three."""
    ledger = world.ledger
    before = {who.sui_address: ledger.balance(who.sui_address) for who in (OLD, NEW, CLIENT)}
    gas_before = {who.sui_address: world.gas(who) for who in (OLD, NEW, CLIENT)}
    sub = ledger.subscribe(CLIENT, world.offer, EPOCHS)
    server_ledger = world.handle()
    try:
        with serve(world, server_ledger):
            sock = dtp.socket.create_connection(
                f"dtp://{world.host}:{PORT}",
                ledger=ledger,
                identity=CLIENT,
                subscription=sub,
                timeout=20,
            )
            try:
                cid = sock.connection_id
                assert cid is not None
                served_free(sock)  # while OLD holds the host
                world.advance_epoch()  # (epoch 1: begun while OLD held the host)
                ledger.set_authority(OLD, world.host, NEW.sui_address)
                ended = until_ended(sock, 20)
                assert f"host {world.host} is {NEW.sui_address}'s now" in ended.reason
            finally:
                sock.close()
            # NEW's server withdrew the offer and ended the connection
            assert wait_for(lambda: is_settled(ledger, cid), 20)
    finally:
        server_ledger.close()
    # (read from the ledger's events: its client may have deleted the settled connection)
    (opened,) = [
        e
        for e in ledger.events(filter=EventFilter(type="ConnectionOpened"))[0]
        if e["connection"] == cid
    ]
    assert opened["server"] == OLD.sui_address
    escrow = settled_escrow(ledger, cid)
    assert escrow.claimed == 0 and escrow.balance == 0
    offer = ledger.get_subscription_offer(world.offer)
    assert offer.withdrawn and offer.withdrawn_epoch == 1
    (withdrawn,) = ledger.events(filter=EventFilter(type="SubscriptionOfferWithdrawn"))[0]
    (end,) = ledger.events(filter=EventFilter(type="SubscribedConnectionEnded"))[0]
    assert withdrawn.sender == end.fields["by"] == NEW.sui_address  # (NEW paid for both)
    # OLD earned the epochs begun while it held the host; CLIENT takes back the rest
    assert ledger.claim_subscription(OLD, sub) == 2 * PRICE
    assert ledger.refund_subscription(CLIENT, sub) == (EPOCHS - 2) * PRICE
    assert ledger.get_subscription(sub).funds == 0
    after = {who.sui_address: ledger.balance(who.sui_address) for who in (OLD, NEW, CLIENT)}
    gas = {
        who.sui_address: world.gas(who) - gas_before[who.sui_address] for who in (OLD, NEW, CLIENT)
    }
    assert after[OLD.sui_address] == before[OLD.sui_address] + 2 * PRICE - gas[OLD.sui_address]
    assert after[CLIENT.sui_address] == (
        before[CLIENT.sui_address] - 2 * PRICE - gas[CLIENT.sui_address]
    )
    assert after[NEW.sui_address] == before[NEW.sui_address] - gas[NEW.sui_address]
    if world.node is not None:
        assert gas[NEW.sui_address] > 0  # (the withdrawal and the end: NEW's)
    assert world.conserved()


def test_a_sold_hosts_served_subscription_is_ended_and_refunded_to_the_mist(
    tmp_path: Path, driver: Driver
) -> None:
    @contextlib.contextmanager
    def serve(world: World, ledger: Ledger) -> Iterator[Any]:
        assert isinstance(world.ledger, LocalLedger)  # (the driver makes its own handle)
        with driver.serve(
            world.host, PORT, "echo", ledger=world.ledger, **_options(world)
        ) as server:
            yield server

    with _world(tmp_path, "local") as world:
        _sold_while_served(world, serve)


def test_on_the_sui_stand_in_the_new_authority_pays_the_gas_of_the_end(tmp_path: Path) -> None:
    with _world(tmp_path, "sui") as world:
        _sold_while_served(world, _blocking)


@pytest.fixture(params=["local", "sui"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """The world on each ledger, CLIENT subscribed for EPOCHS epochs (:attr:`World.sub`)."""
    with _world(tmp_path, request.param) as made:
        made.sub = made.ledger.subscribe(CLIENT, made.offer, EPOCHS)
        yield made


def test_a_sold_hosts_subscription_is_refused_at_admission_and_its_offer_withdrawn(
    world: World,
) -> None:
    ledger, sub = world.ledger, world.sub
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    opened = ledger.open_subscribed_connection(CLIENT, sub, cap, deposit=700)
    cid = opened.connection_id
    client_before = ledger.balance(CLIENT.sui_address)
    client_gas = world.gas(CLIENT)

    def verdict(admission: LedgerAdmission) -> str | None:
        return admission(PeerInfo(CLIENT.sui_address, cid, PORT))

    assert verdict(LedgerAdmission(ledger, world.host, PORT, withdraw_as=NEW)) is None
    ledger.set_authority(OLD, world.host, NEW.sui_address)
    # a server that withdraws nothing refuses it all the same
    refusal = verdict(LedgerAdmission(ledger, world.host, PORT))
    assert refusal is not None and refusal.startswith("The subscription is over: ")
    assert f"is {NEW.sui_address}'s now" in refusal
    assert not ledger.get_subscription_offer(world.offer).withdrawn
    # the client cannot end it yet: over for the runtime, live on the chain
    with pytest.raises(PaymentModelError) as live:
        ledger.end_subscribed_connection(CLIENT, cid)
    assert live.value.name == "ESubscriptionLive"
    # NEW's server withdraws the offer as it refuses the connection
    refusal = verdict(LedgerAdmission(ledger, world.host, PORT, withdraw_as=NEW))
    assert refusal is not None and "is over" in refusal
    offer = ledger.get_subscription_offer(world.offer)
    assert offer.withdrawn and offer.withdrawn_epoch == 0
    # a later refusal makes no second withdrawal (it finds it withdrawn)
    again = verdict(LedgerAdmission(ledger, world.host, PORT, withdraw_as=NEW))
    assert again is not None and "was withdrawn in epoch 0" in again
    events, _ = ledger.events(filter=EventFilter(type="SubscriptionOfferWithdrawn"))
    assert [e.sender for e in events] == [NEW.sui_address]
    # so its client ends it at once, its deposit back, and takes back every epoch
    # not begun (epoch 0, begun, is OLD's)
    assert ledger.end_subscribed_connection(CLIENT, cid) == 700
    assert ledger.refund_subscription(CLIENT, sub) == (EPOCHS - 1) * PRICE
    assert ledger.claim_subscription(OLD, sub) == PRICE
    spent = world.gas(CLIENT) - client_gas
    assert ledger.balance(CLIENT.sui_address) == (
        client_before + 700 + (EPOCHS - 1) * PRICE - spent
    )
    assert world.conserved()


def test_a_new_open_with_a_sold_hosts_offer_is_refused_before_any_transaction(
    world: World,
) -> None:
    ledger, sub = world.ledger, world.sub
    ledger.set_authority(OLD, world.host, NEW.sui_address)
    balance, gas = ledger.balance(CLIENT.sui_address), world.gas(CLIENT)
    with pytest.raises(PaymentModelError) as refused:
        dtp.socket.create_connection(
            f"dtp://{world.host}:{PORT}",
            ledger=ledger,
            identity=CLIENT,
            subscription=sub,
            timeout=10,
        )
    assert refused.value.qualified_name == "subscription::EProviderChanged"
    # no spending cap made, no open, no gas
    assert ledger.balance(CLIENT.sui_address) == balance and world.gas(CLIENT) == gas
    assert not ledger.events(filter=EventFilter(type="SpendingCapCreated"))[0]
    assert world.conserved()
