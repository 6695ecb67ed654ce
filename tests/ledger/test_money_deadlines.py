"""The money rules that give every deposit a way back and keep connections to what paid
for them (docs/escrow.md §12, §13, §16), on LocalLedger and through SuiLedger on the Sui
node stand-in alike (the ``world`` fixture; gas accounted on Sui): who may retire
retention terms once the host's authority changed, a replacement that fails leaving the
old terms live, a subscribed connection ended from HalfClosed keeping its first close,
refusals the SDK makes before any transaction, an empty delivery, and a sampled run of
the rules after which every deposit comes back to someone once its deadline passed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import (
    ChainError,
    ConnectionStateError,
    InvalidArgument,
    NotAuthorized,
    PaymentModelError,
    WrongObject,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._economics import MAX_RETENTION_MS
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn

SLA = Sla(10, 5, 100)
PORT = 7
RETENTION_MS = 10_000
PRICE = 3  # MIST per stored byte
GAS = 10**10


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


PROVIDER, CLIENT, HEIR, ANYONE = ident(0x61), ident(0x62), ident(0x63), ident(0x64)
EVERYONE = (PROVIDER, CLIENT, HEIR, ANYONE)


class World:
    """A ledger (LocalLedger file, or SuiLedger on the stand-in) with PROVIDER's host
    and service, CLIENT's cap, and everyone funded; balances net of gas."""

    def __init__(self, ledger: Ledger, node: SuiNodeStandIn | None, local: LocalLedger | None):
        self.ledger = ledger
        self.node = node
        self.local = local
        for who in EVERYONE:
            self.fund(who.sui_address, 1_000_000)
        self.host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
        ledger.add_service(PROVIDER, self.host, PORT, "raw", SLA)
        self.cap = ledger.create_spending_cap(CLIENT, 10**9)

    def fund(self, address: str, amount: int) -> None:
        if self.node is not None:
            self.node.faucet(address, amount + GAS)
        else:
            assert self.local is not None
            self.local.faucet(address, amount)

    def advance_clock(self, ms: int) -> None:
        (self.node or self.local).advance_clock(ms)  # type: ignore[union-attr]

    def advance_epoch(self) -> None:
        (self.node or self.local).advance_epoch()  # type: ignore[union-attr]

    def balance(self, who: HostIdentity) -> int:
        gas = self.node.gas_paid(who.sui_address) if self.node is not None else 0
        return self.ledger.balance(who.sui_address) + gas

    def conserved(self) -> bool:
        if self.node is not None:
            a = self.node.audit()
            return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"] + a["gas"]
        assert self.local is not None
        a = self.local.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]

    def held(self) -> int:
        """MIST held by escrows, subscriptions, pools and records."""
        audit = (self.node or self.local).audit()  # type: ignore[union-attr]
        return int(audit["escrows"])

    def refused(self, exc: type[ChainError], name: str, call: Callable[[], Any]) -> None:
        """``call`` raises ``exc`` named ``name`` and moves no MIST (gas aside)."""
        before = {who: self.balance(who) for who in EVERYONE}
        with pytest.raises(exc) as info:
            call()
        assert info.value.name == name, info.value
        assert {who: self.balance(who) for who in EVERYONE} == before
        assert self.conserved()

    def pipe_of(self, who: HostIdentity, connection_id: str) -> str:
        return self.ledger.create_pipe(who, connection_id, 1)


@pytest.fixture(params=["local", "sui"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "local":
        local = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
        try:
            yield World(local, None, local)
        finally:
            local.close()
        return
    with SuiNodeStandIn(clock_ms=0) as node:
        ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            yield World(ledger, node, None)
        finally:
            ledger.close()


# -- retention terms ------------------------------------------------------------------------


def test_the_authority_now_retires_terms_the_old_one_made(world: World) -> None:
    ledger = world.ledger
    terms = ledger.create_retention_terms(PROVIDER, world.host, PORT, RETENTION_MS, PRICE)
    conn = ledger.open_connection(CLIENT, world.host, PORT, world.cap, 1_000).connection_id
    pipe = world.pipe_of(CLIENT, conn)
    ledger.set_authority(PROVIDER, world.host, HEIR.sui_address)
    # the old authority no longer speaks for the host's terms
    world.refused(
        NotAuthorized, "ENotProvider", lambda: ledger.retire_retention_terms(PROVIDER, terms)
    )
    ledger.retire_retention_terms(HEIR, terms)
    assert ledger.get_retention_terms(terms).retired
    world.refused(
        PaymentModelError, "ETermsRetired", lambda: ledger.retire_retention_terms(HEIR, terms)
    )
    # no record is kept under them any more, whatever they cost
    world.refused(
        PaymentModelError,
        "ETermsRetired",
        lambda: ledger.send_retained(CLIENT, pipe, terms, 0, b"late"),
    )
    assert world.conserved()


def test_a_replacement_refused_leaves_the_old_terms_live(world: World) -> None:
    ledger = world.ledger
    terms = ledger.create_retention_terms(PROVIDER, world.host, PORT, RETENTION_MS, PRICE)
    world.refused(
        InvalidArgument,
        "EInvalidTerms",
        lambda: ledger.replace_retention_terms(PROVIDER, terms, MAX_RETENTION_MS + 1, PRICE),
    )
    assert not ledger.get_retention_terms(terms).retired  # one transaction: nothing moved
    longest = ledger.replace_retention_terms(PROVIDER, terms, MAX_RETENTION_MS, 1)
    assert ledger.get_retention_terms(terms).retired
    new = ledger.get_retention_terms(longest)
    assert (new.port, new.retention_ms, new.storage_price_per_byte, new.retired) == (
        PORT,
        MAX_RETENTION_MS,
        1,
        False,
    )


def test_a_record_is_refused_on_a_connection_settled_or_half_closed(world: World) -> None:
    ledger = world.ledger
    terms = ledger.create_retention_terms(PROVIDER, world.host, PORT, RETENTION_MS, PRICE)
    conn = ledger.open_connection(CLIENT, world.host, PORT, world.cap, 1_000).connection_id
    client_pipe = world.pipe_of(CLIENT, conn)
    server_pipe = world.pipe_of(PROVIDER, conn)
    ledger.close_connection(CLIENT, conn)  # half-closed by the client
    for who, pipe in ((CLIENT, client_pipe), (PROVIDER, server_pipe)):
        world.refused(
            ConnectionStateError,
            "EConnectionNotOpen",
            lambda who=who, pipe=pipe: ledger.send_retained(who, pipe, terms, 0, b"x"),
        )
    # plain pipe data still goes (the carrier's last payloads do: docs/ledger-carrier.md)
    ledger.pipe_send(CLIENT, client_pipe, 0, b"close")
    ledger.settle(PROVIDER, conn)
    world.refused(
        ConnectionStateError,
        "EConnectionNotOpen",
        lambda: ledger.send_retained(PROVIDER, server_pipe, terms, 0, b"x"),
    )


# -- subscribed connections ------------------------------------------------------------------


def test_a_half_closed_subscribed_connection_ends_keeping_its_first_close(world: World) -> None:
    ledger = world.ledger
    offer = ledger.create_subscription_offer(PROVIDER, world.host, PORT, 100)
    sub = ledger.subscribe(CLIENT, offer, 1)
    opened = ledger.open_subscribed_connection(CLIENT, sub, world.cap, 40)
    conn = opened.connection_id
    world.advance_clock(500)
    ledger.close_connection(CLIENT, conn)
    half_closed_at = ledger.get_connection(conn).half_closed_at_ms
    assert half_closed_at is not None
    world.refused(
        PaymentModelError,
        "ESubscriptionLive",
        lambda: ledger.end_subscribed_connection(ANYONE, conn),
    )
    world.advance_epoch()
    world.advance_clock(700)
    before = world.balance(CLIENT)
    # a third party ends it: no half-close timeout to wait out, nothing owed
    assert ledger.end_subscribed_connection(ANYONE, conn) == 40
    tc = ledger.get_connection(conn)
    assert tc.settled and tc.state is ConnectionState.CLOSED
    assert tc.half_closed_at_ms == half_closed_at and tc.closed_at_ms == half_closed_at + 700
    assert world.balance(CLIENT) == before + 40
    escrow = ledger.get_escrow(tc.escrow)
    assert (escrow.claimed, escrow.refunded, escrow.balance) == (0, 40, 0)
    world.refused(
        ConnectionStateError,
        "EAlreadySettled",
        lambda: ledger.end_subscribed_connection(ANYONE, conn),
    )
    assert world.conserved()


def test_a_metered_connection_is_refused_before_any_transaction(world: World) -> None:
    ledger = world.ledger
    conn = ledger.open_connection(CLIENT, world.host, PORT, world.cap, 1_000).connection_id
    gas = world.node.gas_paid(ANYONE.sui_address) if world.node is not None else 0
    world.refused(
        WrongObject, "ENotSubscribed", lambda: ledger.end_subscribed_connection(ANYONE, conn)
    )
    if world.node is not None:  # refused by the SDK: no transaction, no gas
        assert world.node.gas_paid(ANYONE.sui_address) == gas
    # named explicitly, the ledger's rule refuses it the same way
    offer = ledger.create_subscription_offer(PROVIDER, world.host, PORT, 100)
    sub = ledger.subscribe(CLIENT, offer, 1)
    world.advance_epoch()
    world.refused(
        WrongObject,
        "ENotSubscribed",
        lambda: ledger.end_subscribed_connection(ANYONE, conn, sub),
    )
    assert ledger.get_connection(conn).state is ConnectionState.OPEN


def test_subscription_over_says_why(world: World) -> None:
    ledger = world.ledger
    offer = ledger.create_subscription_offer(PROVIDER, world.host, PORT, 100)
    sub = ledger.subscribe(CLIENT, offer, 2)
    assert ledger.subscription_over(sub) is None
    world.advance_epoch()
    assert ledger.subscription_over(sub) is None  # epoch 1 of 0..1
    world.advance_epoch()
    assert ledger.subscription_over(sub) == f"subscription {sub} covers epochs 0..1; it is epoch 2"
    ledger.renew_subscription(CLIENT, sub, 1)
    assert ledger.subscription_over(sub) is None
    ledger.withdraw_subscription_offer(PROVIDER, offer)
    over = ledger.subscription_over(sub)
    assert over is not None and f"offer {offer} was withdrawn in epoch 2" in over


# -- response escrow -------------------------------------------------------------------------


def test_an_empty_response_is_no_delivery(world: World) -> None:
    ledger = world.ledger
    escrow = ledger.response_escrow_deposit(CLIENT, PROVIDER.sui_address, b"q1", 50, 1_000)
    world.refused(
        InvalidArgument,
        "EEmptyResponse",
        lambda: ledger.response_escrow_deliver(PROVIDER, escrow, b""),
    )
    assert ledger.response_escrow_deliver(PROVIDER, escrow, b"\x00") == 50  # one byte is one
    assert world.conserved()


# -- every deposit comes back after its deadline ----------------------------------------------


def test_a_sampled_run_returns_every_deposit_after_its_deadline(world: World) -> None:
    """A seeded walk over the rules (subscriptions bought and connections opened with
    them, metered connections, records sent under terms that are retired and replaced,
    confirmations, closes, time and epochs passing), then every deadline passes and
    each holder takes what is its: every call succeeds, and nothing is left held."""
    ledger, rng = world.ledger, random.Random(53)
    offer = ledger.create_subscription_offer(PROVIDER, world.host, PORT, 100)
    terms = ledger.create_retention_terms(PROVIDER, world.host, PORT, RETENTION_MS, PRICE)
    subs: list[str] = []
    subscribed: list[str] = []
    metered: list[str] = []
    pipes: dict[tuple[str, str], str] = {}
    records: list[tuple[str, HostIdentity]] = []
    for _ in range(40):
        step = rng.choice(["subscribe", "metered", "send", "confirm", "close", "time", "terms"])
        if step == "subscribe":
            sub = ledger.subscribe(CLIENT, offer, rng.randint(1, 2))
            subs.append(sub)
            deposit = rng.choice([0, 25])
            subscribed.append(
                ledger.open_subscribed_connection(CLIENT, sub, world.cap, deposit).connection_id
            )
        elif step == "metered":
            metered.append(
                ledger.open_connection(CLIENT, world.host, PORT, world.cap, 500).connection_id
            )
        elif step == "send" and (subscribed or metered):
            conn = rng.choice(subscribed + metered)
            who = rng.choice([CLIENT, PROVIDER])
            if ledger.get_connection(conn).state is not ConnectionState.OPEN:
                continue
            key = (conn, who.sui_address)
            if key not in pipes:
                pipes[key] = world.pipe_of(who, conn)
            data = rng.randbytes(rng.randint(1, 30))
            records.append((ledger.send_retained(who, pipes[key], terms, 0, data), who))
        elif step == "confirm" and records:
            record, sender = rng.choice(records)
            info = ledger.get_retained_record(record)
            if not info.consumed:
                ledger.confirm_consumed(PROVIDER if sender is CLIENT else CLIENT, record)
        elif step == "close" and (subscribed or metered):
            conn = rng.choice(subscribed + metered)
            if ledger.get_connection(conn).state is ConnectionState.OPEN:
                ledger.close_connection(rng.choice([CLIENT, PROVIDER]), conn)
        elif step == "time":
            world.advance_clock(rng.choice([1, RETENTION_MS // 2, RETENTION_MS]))
            if rng.random() < 0.3:
                world.advance_epoch()
        elif step == "terms":
            terms = ledger.replace_retention_terms(
                PROVIDER, terms, rng.choice([0, RETENTION_MS, 2 * RETENTION_MS]), PRICE
            )
    assert world.held() > 0 and records and subscribed and metered, (records, subscribed, metered)
    # every deadline passes: records' reclaim times, the subscriptions, the half-closes
    last = max((ledger.get_retained_record(r).reclaim_after_ms for r, _ in records), default=0)
    world.advance_clock(max(0, last - ledger.clock_ms()) + HALF_CLOSE_TIMEOUT_MS)
    while any(ledger.subscription_over(sub) is None for sub in subs):
        world.advance_epoch()
    for record, sender in records:
        deposit = ledger.get_retained_record(record).deposit
        assert ledger.delete_retained(sender, record) == deposit
    for conn in subscribed:
        if not ledger.get_connection(conn).settled:
            ledger.end_subscribed_connection(ANYONE, conn)
    for conn in metered:
        tc = ledger.get_connection(conn)
        if tc.settled:
            continue
        if tc.state is ConnectionState.OPEN:
            ledger.close_connection(CLIENT, conn)
            world.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        ledger.settle(CLIENT, conn)
    for sub in subs:
        ledger.claim_subscription(PROVIDER, sub)
    assert world.held() == 0, "a deposit was left without a way back"
    assert all(ledger.get_connection(c).settled for c in subscribed + metered)
    assert world.conserved()
