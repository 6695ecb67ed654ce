"""The payment models (docs/escrow.md §13-16) beyond the scenario table: typed errors for
bad input on LocalLedger, SuiLedger builders pinned by golden bytes, and the BCS layouts of
their objects and events checked against what LocalLedger produces.

Regenerate the golden vectors (only after a deliberate change to the builders)::

    python -m tests.ledger.test_payment_models --regenerate
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pysui.sui.sui_bcs import bcs

from dtp.errors import (
    AlreadyRefunded,
    ChainError,
    InsufficientFunds,
    InvalidArgument,
    InvalidObjectId,
    NotAuthorized,
    ObjectNotFound,
    PaymentModelError,
    SponsorUnfunded,
    SubscriptionExpired,
    WrongObject,
)
from dtp.ledger._economics import PaymentModels, SponsorPledge, sponsor_split
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui import event_from_proto
from dtp.ledger.sui._codec import encode
from dtp.ledger.sui._economics import (
    ECONOMICS_EVENT_LAYOUTS,
    ECONOMICS_OBJECT_LAYOUTS,
    decode_economics_object,
)
from dtp.payments.receipts import Meter, Receipt
from tests.ledger.payment_model_cases import CASES, CLIENT, OTHER, OWN, SERVER, S, ident
from tests.ledger.sui_tx_cases import CTX, PACKAGE, SENDER
from tests.support.golden_tx import regenerate_main, write_golden
from tests.support.paths import GOLDEN as GOLDEN_DIR
from tests.support.sui_network import SuiNetwork

GOLDEN = GOLDEN_DIR / "economics_transactions.json"
SLA = Sla(10, 5, 1000)


def conserved(ledger: LocalLedger) -> bool:
    a = ledger.audit()
    return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


class World:
    """A host with one service (port 7), a client with a cap and 100 000 MIST, a server
    with 100 000 MIST, on a fresh ledger file."""

    def __init__(self, path: Path) -> None:
        self.ledger = LocalLedger(path, clock_ms=0)
        self.host = self.ledger.create_host(SERVER, b"\x01" * 32)
        self.ledger.add_service(SERVER, self.host, 7, "raw", SLA)
        self.cap = self.ledger.create_spending_cap(CLIENT, 1_000_000)
        for who in (CLIENT, SERVER, OTHER):
            self.ledger.faucet(who.sui_address, 100_000)

    def refused(self, exc: type[ChainError], name: str, call: Any, *args: Any) -> ChainError:
        before = self.ledger.dump()
        with pytest.raises(exc) as info:
            call(*args)
        assert info.value.name == name
        assert str(info.value)
        assert self.ledger.dump() == before, "a refused call changed the ledger"
        assert conserved(self.ledger)
        return info.value


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "ledger.sqlite")


# -- bad input gives typed errors ---------------------------------------------------------------


def test_subscription_bad_input(world: World) -> None:
    ledger = world.ledger
    world.refused(
        NotAuthorized, "ENotProvider", ledger.create_subscription_offer, CLIENT, world.host, 7, 1
    )
    world.refused(
        ChainError, "EServiceNotFound", ledger.create_subscription_offer, SERVER, world.host, 8, 1
    )
    world.refused(
        ChainError, "EInvalidTerms", ledger.create_subscription_offer, SERVER, world.host, 7, 0
    )
    offer = ledger.create_subscription_offer(SERVER, world.host, 7, 100, 1)
    world.refused(
        InsufficientFunds, "InsufficientCoinBalance", ledger.subscribe, CLIENT, offer, 10**4
    )
    sub = ledger.subscribe(CLIENT, offer, 1)
    other_cap = ledger.create_spending_cap(OTHER, 1_000)
    world.refused(
        NotAuthorized, "ENotHolder", ledger.open_subscribed_connection, OTHER, sub, other_cap
    )
    world.refused(NotAuthorized, "ENotHolder", ledger.renew_subscription, OTHER, sub, 1)
    world.refused(NotAuthorized, "ENotProvider", ledger.claim_subscription, CLIENT, sub)
    world.refused(PaymentModelError, "ENotWithdrawn", ledger.refund_subscription, CLIENT, sub)
    other_host = ledger.create_host(OTHER, b"\x02" * 32)
    world.refused(
        WrongObject,
        "EWrongHost",
        ledger.open_subscribed_connection,
        CLIENT,
        sub,
        world.cap,
        0,
        None,
        other_host,
    )
    ledger.advance_epoch()
    err = world.refused(
        SubscriptionExpired,
        "ESubscriptionExpired",
        ledger.open_subscribed_connection,
        CLIENT,
        sub,
        world.cap,
    )
    assert err.qualified_name == "subscription::ESubscriptionExpired"
    ledger.withdraw_subscription_offer(SERVER, offer)
    world.refused(PaymentModelError, "EOfferWithdrawn", ledger.subscribe, CLIENT, offer, 1)
    world.refused(PaymentModelError, "EOfferWithdrawn", ledger.renew_subscription, CLIENT, sub, 1)
    assert ledger.refund_subscription(CLIENT, sub) == 0  # the one epoch was used
    world.refused(AlreadyRefunded, "EAlreadyRefunded", ledger.refund_subscription, CLIENT, sub)
    assert ledger.claim_subscription(SERVER, sub) == 100
    assert ledger.get_subscription(sub).funds == 0
    assert conserved(ledger)


def test_subscribed_connection_is_unmetered_and_claims_zero(world: World) -> None:
    ledger = world.ledger
    offer = ledger.create_subscription_offer(SERVER, world.host, 7, 100, 1)
    sub = ledger.subscribe(CLIENT, offer, 3)
    opened = ledger.open_subscribed_connection(CLIENT, sub, world.cap)  # no deposit at all
    tc = ledger.get_connection(opened.connection_id)
    assert tc.sla == Sla(0, 0, 0)
    # A metered connection on the same service still needs its deposit.
    world.refused(
        InsufficientFunds, "EInsufficientDeposit", ledger.open_connection, CLIENT, world.host, 7,
        world.cap, 0,
    )  # fmt: skip
    # The in-band meter, fed the connection's SLA as the socket layer reads it, signs
    # receipts for 0 MIST that the server can claim.
    deposited = ledger.get_escrow(opened.escrow_id).deposited
    meter = Meter(CLIENT, ledger.receipt_scope(opened.connection_id), tc.sla, deposited)
    metered = meter.record(now_ms=0, nbytes=50 << 20) or meter.flush(0)
    assert metered is not None and metered.total_amount == 0
    assert ledger.claim(SERVER, opened.escrow_id, metered) == 0
    receipt = Receipt(
        ledger.receipt_scope(opened.connection_id), 10**9, 10**6, 0, metered.nonce + 1
    ).sign(CLIENT)
    assert ledger.claim(SERVER, opened.escrow_id, receipt) == 0
    assert ledger.get_escrow(opened.escrow_id).claimed == 0
    assert conserved(ledger)


def test_sponsor_bad_input(world: World) -> None:
    ledger = world.ledger
    create = partial(ledger.create_sponsor_pool, max_pledge=10**9, lanes=1)
    world.refused(NotAuthorized, "ENotProvider", create, CLIENT, world.host, 7, 1)
    world.refused(ChainError, "EInvalidShare", create, SERVER, world.host, 7, 0)
    world.refused(ChainError, "EInvalidShare", create, SERVER, world.host, 7, 10_001)
    for lanes in (0, 65):
        err = world.refused(
            InvalidArgument, "EInvalidLanes", partial(create, lanes=lanes), SERVER, world.host,
            7, 1,
        )  # fmt: skip
        assert err.qualified_name == "sponsor::EInvalidLanes"
    with pytest.raises(InvalidArgument, match="max_pledge"):
        ledger.create_sponsor_pool(SERVER, world.host, 7, 1, max_pledge=-1)
    with pytest.raises(InvalidArgument, match="lanes"):
        ledger.create_sponsor_pool(SERVER, world.host, 7, 1, max_pledge=1, lanes=2**64)
    pool = create(SERVER, world.host, 7, 10_000)
    world.refused(NotAuthorized, "ENotProvider", ledger.set_sponsor_max_pledge, CLIENT, pool, 1)
    with pytest.raises(InvalidArgument, match="max_pledge"):
        ledger.set_sponsor_max_pledge(SERVER, pool, 2**64)
    world.refused(ChainError, "EZeroAmount", ledger.fund_sponsor_pool, SERVER, pool, 0)
    # Unfunded: a full sponsor must pledge the whole deposit.
    err = world.refused(
        SponsorUnfunded, "ESponsorUnfunded", ledger.open_sponsored_connection, CLIENT, pool,
        world.cap, 1_000,
    )  # fmt: skip
    assert isinstance(err, InsufficientFunds)
    ledger.fund_sponsor_pool(OTHER, pool, 1_500)  # anyone may fund
    opened = ledger.open_sponsored_connection(CLIENT, pool, world.cap, 1_000)
    (lane,) = ledger.get_sponsor_lanes(pool)
    assert (lane.available, lane.pledges) == (500, 1)
    assert ledger.get_sponsor_pledge(pool, opened.connection_id) == SponsorPledge(lane.id, 1_000)
    world.refused(NotAuthorized, "ENotProvider", ledger.withdraw_sponsor_pool, CLIENT, pool, 1)
    world.refused(
        SponsorUnfunded, "ESponsorUnfunded", ledger.withdraw_sponsor_pool, SERVER, pool, 501
    )
    plain = ledger.open_connection(CLIENT, world.host, 7, world.cap, 1_000)
    world.refused(WrongObject, "ENotSponsored", ledger.reimburse, CLIENT, pool, plain.connection_id)
    world.refused(
        WrongObject, "EWrongEscrow", ledger.reimburse, CLIENT, pool, opened.connection_id,
        plain.escrow_id,
    )  # fmt: skip
    # A lane of another pool (of the same service) is refused by every call that takes one.
    other_lane = ledger.get_sponsor_pool(create(SERVER, world.host, 7, 5_000)).lanes[0]
    for call, *args in (
        (ledger.fund_sponsor_pool, OTHER, pool, 1),
        (ledger.withdraw_sponsor_pool, SERVER, pool, 1),
        (ledger.open_sponsored_connection, CLIENT, pool, world.cap, 1_000),
        (ledger.reimburse, CLIENT, pool, opened.connection_id),
    ):
        err = world.refused(WrongObject, "EWrongLane", partial(call, lane=other_lane), *args)
        assert other_lane in str(err)
    # A top-up is not sponsored: the reimbursement stops at the pledge.
    ledger.top_up(CLIENT, opened.escrow_id, 1_000)
    receipt = Receipt(ledger.receipt_scope(opened.connection_id), 153_600, 0, 1_500, 1).sign(CLIENT)
    ledger.close_connection(CLIENT, opened.connection_id)
    ledger.settle_with_receipt(SERVER, opened.connection_id, receipt)
    before = ledger.balance(CLIENT.sui_address)
    assert ledger.reimburse(OTHER, pool, opened.connection_id) == 1_000
    assert ledger.balance(CLIENT.sui_address) == before + 1_000
    # the pledge is gone with its reimbursement: the lane holds no entry for it
    (lane,) = ledger.get_sponsor_lanes(pool)
    assert (lane.funds, lane.reserved, lane.pledges) == (500, 0, 0)
    assert ledger.get_sponsor_pledge(pool, opened.connection_id) is None
    err = world.refused(
        WrongObject, "ENotSponsored", ledger.reimburse, CLIENT, pool, opened.connection_id
    )
    assert "reimbursed" in str(err)
    assert conserved(ledger)


def test_sponsor_split_rounds_down_for_the_provider() -> None:
    assert sponsor_split(120, 2_500) == (90, 30)
    assert sponsor_split(1, 5_000) == (1, 0)
    assert sponsor_split(0, 10_000) == (0, 0)
    assert sponsor_split(999, 10_000) == (0, 999)


def test_tickets_bad_input(world: World) -> None:
    ledger = world.ledger
    for args in ((0, 1, 0, 10), (1, 0, 0, 10), (1, 3, 2, 10), (1, 1, 0, 0)):
        world.refused(ChainError, "EInvalidTerms", ledger.create_ticket_sale, SERVER, "x", *args)
    sale = ledger.create_ticket_sale(SERVER, "show", 10, 2, 0, 1_000)
    world.refused(NotAuthorized, "ENotOrganizer", ledger.go_on_air, CLIENT, sale)
    world.refused(NotAuthorized, "ENotOrganizer", ledger.cancel_ticket_sale, CLIENT, sale)
    world.refused(ChainError, "EWrongPayment", ledger.buy_tickets, CLIENT, sale, 0)
    ledger.buy_tickets(CLIENT, sale, 2)
    world.refused(PaymentModelError, "ERefundNotOpen", ledger.refund_tickets, CLIENT, sale)
    ledger.set_clock(1_001)
    world.refused(PaymentModelError, "ESaleClosed", ledger.buy_tickets, OTHER, sale, 1)
    world.refused(PaymentModelError, "ESaleClosed", ledger.go_on_air, SERVER, sale)
    world.refused(AlreadyRefunded, "ENoTickets", ledger.refund_tickets, OTHER, sale)
    assert ledger.refund_tickets(CLIENT, sale) == 20
    assert conserved(ledger)


def test_retention_bad_input(world: World) -> None:
    ledger = world.ledger
    world.refused(
        NotAuthorized, "ENotProvider", ledger.create_retention_terms, CLIENT, world.host, 7, 1, 1
    )
    terms = ledger.create_retention_terms(SERVER, world.host, 7, 5_000, 3)
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 1_000)
    pipe = ledger.create_pipe(CLIENT, opened.connection_id, 1)
    world.refused(ChainError, "EInnerNotFound", ledger.send_retained, CLIENT, pipe, terms, 1, b"x")
    world.refused(
        ChainError, "ObjectOwnedByAnother", ledger.send_retained, SERVER, pipe, terms, 0, b"x"
    )
    ledger.add_service(SERVER, world.host, 8, "raw", SLA)
    other_terms = ledger.create_retention_terms(SERVER, world.host, 8, 5_000, 3)
    world.refused(
        WrongObject, "EWrongTerms", ledger.send_retained, CLIENT, pipe, other_terms, 0, b"x"
    )
    record = ledger.send_retained(CLIENT, pipe, terms, 0, b"retained")
    r = ledger.get_retained_record(record)
    assert (r.deposit, r.receiver, r.seq, r.data) == (24, SERVER.sui_address, 0, b"retained")
    world.refused(PaymentModelError, "ENotConsumed", ledger.delete_retained, CLIENT, record)
    world.refused(NotAuthorized, "ENotReceiver", ledger.confirm_consumed, OTHER, record)
    ledger.confirm_consumed(SERVER, record)
    world.refused(PaymentModelError, "EAlreadyConsumed", ledger.confirm_consumed, SERVER, record)
    world.refused(NotAuthorized, "ENotSender", ledger.delete_retained, SERVER, record)
    world.refused(PaymentModelError, "ERetentionNotElapsed", ledger.delete_retained, CLIENT, record)
    ledger.advance_clock(5_000)
    assert ledger.delete_retained(CLIENT, record) == 24
    world.refused(ObjectNotFound, "ObjectNotFound", ledger.delete_retained, CLIENT, record)
    # The server's pipe sends to the client.
    server_pipe = ledger.create_pipe(SERVER, opened.connection_id, 1)
    back = ledger.send_retained(SERVER, server_pipe, terms, 0, b"")
    assert ledger.get_retained_record(back).receiver == CLIENT.sui_address
    assert ledger.get_retained_record(back).deposit == 0
    assert conserved(ledger)


def test_payment_bad_input(world: World) -> None:
    ledger = world.ledger
    world.refused(InvalidArgument, "EZeroPayment", ledger.pay, CLIENT, OTHER.sui_address, 0)
    world.refused(
        InvalidArgument, "EMemoTooLong", ledger.pay, CLIENT, OTHER.sui_address, 1, b"m" * 257
    )
    world.refused(
        InsufficientFunds, "InsufficientCoinBalance", ledger.pay, CLIENT, OTHER.sui_address,
        100_001,
    )  # fmt: skip
    with pytest.raises(InvalidObjectId):
        ledger.pay(CLIENT, "not an address", 1)
    before = ledger.balance(CLIENT.sui_address), ledger.balance(OTHER.sui_address)
    ledger.pay(CLIENT, OTHER.sui_address, 300, b"m" * 256)  # the longest memo
    after = ledger.balance(CLIENT.sui_address), ledger.balance(OTHER.sui_address)
    assert after == (before[0] - 300, before[1] + 300)
    (sent,) = ledger.events(filter=EventFilter(type="PaymentSent"))[0]
    assert dict(sent.fields) == {
        "from": CLIENT.sui_address,
        "to": OTHER.sui_address,
        "amount": 300,
        "memo": b"m" * 256,
    }
    assert conserved(ledger)


def test_ticketed_broadcast_bad_input(world: World) -> None:
    ledger = world.ledger
    sale = ledger.create_ticket_sale(SERVER, "show", 10, 1, 0, 10_000)
    world.refused(
        NotAuthorized, "ENotOrganizer", ledger.create_ticketed_broadcast, CLIENT, sale, "s", 1, 1
    )
    world.refused(
        ChainError, "EInvalidSlot", ledger.create_ticketed_broadcast, SERVER, sale, "s", 0, 1
    )
    world.refused(
        ObjectNotFound, "ObjectNotFound", ledger.create_ticketed_broadcast, SERVER, world.host,
        "s", 1, 1,
    )  # fmt: skip
    ticketed = ledger.create_ticketed_broadcast(SERVER, sale, "show", 10, 1_000)
    assert ledger.get_broadcast(ticketed).ticket_sale == sale
    plain = ledger.create_broadcast(SERVER, "open", 10, 1_000)
    assert ledger.get_broadcast(plain).ticket_sale is None


def test_ledgers_without_payment_models_say_so() -> None:
    class Bare(PaymentModels):
        pass

    with pytest.raises(NotImplementedError, match="Bare has no subscriptions"):
        Bare().subscribe(CLIENT, "0x1", 1)
    assert issubclass(Ledger, PaymentModels)


# -- two processes racing for the last tickets on one file --------------------------------------

TICKETS = 60


def _buy_until_sold_out(path: str, seed: int, sale: str) -> None:
    ledger = LocalLedger(path)
    me = ident(seed)
    try:
        while True:
            ledger.buy_tickets(me, sale, 1)
    except PaymentModelError as exc:
        assert exc.name == "ESoldOut", exc
    ledger.close()


def test_two_processes_never_oversell(tmp_path: Path) -> None:
    import multiprocessing

    path = str(tmp_path / "tickets.sqlite")
    setup = LocalLedger(path, clock_ms=0)
    buyers = (0x61, 0x62)
    funds = 10 * (TICKETS + 1)  # one buyer may get every ticket and still try once more
    for seed in buyers:
        setup.faucet(ident(seed).sui_address, funds)
    sale = setup.create_ticket_sale(SERVER, "race", 10, TICKETS, TICKETS, 10_000)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_buy_until_sold_out, args=(path, s, sale)) for s in buyers]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    state = setup.get_ticket_sale(sale)
    assert state.sold == TICKETS == sum(state.holders.values())
    spent = {s: funds - setup.balance(ident(s).sui_address) for s in buyers}
    assert {s: 10 * state.holders.get(ident(s).sui_address, 0) for s in buyers} == spent
    assert setup.go_on_air(SERVER, sale) == 10 * TICKETS
    assert conserved(setup)
    setup.close()


# -- SuiLedger builders: golden bytes ------------------------------------------------------------


def build_all() -> dict[str, str]:
    return {
        name: sui_tx.ECONOMICS_BUILDERS[name](CTX, *args).hex()
        for name, (args, _, _) in CASES.items()
    }


def test_every_payment_model_method_has_a_builder_and_a_case() -> None:
    methods = {
        name
        for name in vars(PaymentModels)
        if not name.startswith("_") and not name.startswith("get_")
    }
    methods.add("pay")  # Ledger.pay (dtp/ledger/interface.py): built with the payment models
    assert methods == set(sui_tx.ECONOMICS_BUILDERS) == set(sui_tx.ECONOMICS_TARGETS) == set(CASES)
    assert not set(sui_tx.ECONOMICS_BUILDERS) & set(sui_tx.BUILDERS)


def _kind(arg: Any, inputs: list[Any]) -> str:
    if arg.enum_name == "Input":
        call_arg = inputs[arg.value]
        if call_arg.enum_name == "Pure":
            return "pure"
        return S if call_arg.value.enum_name == "SharedObject" else OWN
    return "coin" if arg.enum_name == "NestedResult" else "result"


@pytest.mark.parametrize("name", sorted(CASES))
def test_economics_golden_bytes(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())["transactions"]
    built = build_all()[name]
    assert built == golden[name], (
        "run python -m tests.ledger.test_payment_models --regenerate after a deliberate change"
    )
    _, kinds, mutable = CASES[name]
    data = bcs.TransactionData.from_bytes(bytes.fromhex(built)).value
    assert data.Sender.to_address_str() == SENDER.sui_address
    ptx = data.TransactionKind.value
    inputs = list(ptx.Inputs)
    commands = list(ptx.Command)
    calls = [c.value for c in commands if c.enum_name == "MoveCall"]
    splits = [c.value for c in commands if c.enum_name == "SplitCoin"]
    assert len(calls) == 1
    assert len(splits) == kinds.count("coin")
    call = calls[0]
    assert (call.Package.to_address_str(), call.Module, call.Function) == (
        PACKAGE,
        *sui_tx.ECONOMICS_TARGETS[name],
    )
    assert [_kind(a, inputs) for a in call.Arguments] == kinds
    shared = {
        i.value.value.ObjectID.to_address_str(): i.value.value.Mutable
        for i in inputs
        if i.enum_name == "Object" and i.value.enum_name == "SharedObject"
    }
    for object_id, is_mutable in mutable.items():
        assert shared[object_id] is is_mutable, object_id


def test_economics_golden_pure_values() -> None:
    data = bcs.TransactionData.from_bytes(
        bytes.fromhex(build_all()["send_retained"])
    ).value.TransactionKind.value
    pure = [bytes(i.value).hex() for i in data.Inputs if i.enum_name == "Pure"]
    # inner, data (uleb128 length + bytes), then the deposit of the SplitCoins
    assert pure == [
        (1).to_bytes(8, "little").hex(),
        (bytes([11]) + b"hello world").hex(),
        (22).to_bytes(8, "little").hex(),
    ]


# -- BCS layouts against LocalLedger -------------------------------------------------------------


def _exercise_everything(ledger: LocalLedger, host: str, cap: str) -> dict[str, str]:
    offer = ledger.create_subscription_offer(SERVER, host, 7, 100, 1)
    sub = ledger.subscribe(CLIENT, offer, 2)
    subscribed = ledger.open_subscribed_connection(CLIENT, sub, cap)
    ledger.renew_subscription(CLIENT, sub, 1)
    ledger.claim_subscription(SERVER, sub)
    ledger.withdraw_subscription_offer(SERVER, offer)
    ledger.refund_subscription(CLIENT, sub)
    ledger.end_subscribed_connection(OTHER, subscribed.connection_id)
    pool = ledger.create_sponsor_pool(SERVER, host, 7, 5_000, max_pledge=10**9, lanes=2)
    ledger.set_sponsor_max_pledge(SERVER, pool, 800)
    ledger.fund_sponsor_pool(SERVER, pool, 2_000)
    ledger.withdraw_sponsor_pool(SERVER, pool, 100)
    opened = ledger.open_sponsored_connection(CLIENT, pool, cap, 1_000)
    ledger.close_connection(SERVER, opened.connection_id)
    ledger.settle(SERVER, opened.connection_id)
    ledger.reimburse(CLIENT, pool, opened.connection_id)
    sale = ledger.create_ticket_sale(SERVER, "show", 10, 1, 0, 10_000)
    ledger.buy_tickets(CLIENT, sale, 2)
    ledger.go_on_air(SERVER, sale)
    other_sale = ledger.create_ticket_sale(SERVER, "off", 10, 5, 0, 10_000)
    ledger.buy_tickets(OTHER, other_sale, 1)
    ledger.cancel_ticket_sale(SERVER, other_sale)
    terms = ledger.create_retention_terms(SERVER, host, 7, 0, 1)
    conn = ledger.open_connection(CLIENT, host, 7, cap, 1_000)
    pipe = ledger.create_pipe(CLIENT, conn.connection_id, 1)
    record = ledger.send_retained(CLIENT, pipe, terms, 0, b"kept")
    ids = {"offer": offer, "sub": sub, "pool": pool, "sale": other_sale, "terms": terms}
    ids["lane"] = ledger.get_sponsor_pool(pool).lanes[0]
    ids["record"] = record
    ledger.confirm_consumed(SERVER, record)
    gone = ledger.send_retained(CLIENT, pipe, terms, 0, b"gone")
    ledger.confirm_consumed(SERVER, gone)
    ledger.delete_retained(CLIENT, gone)
    ledger.replace_retention_terms(SERVER, terms, 0, 2)
    ledger.refund_tickets(OTHER, other_sale)
    ledger.leave_ticket_sale(CLIENT, sale)
    ledger.destroy_ticket_sale(SERVER, sale)
    ledger.pay(CLIENT, OTHER.sui_address, 5, b"thanks")
    return ids


def test_event_and_object_layouts_match_local_ledger(world: World) -> None:
    ledger = world.ledger
    ids = _exercise_everything(ledger, world.host, world.cap)
    seen = set()
    for event in ledger.events()[0]:
        key = (event.module, event.name)
        if key not in ECONOMICS_EVENT_LAYOUTS:
            continue
        layout = ECONOMICS_EVENT_LAYOUTS[key]
        names = [f for f, _ in layout[1]]
        assert len(names) == len(set(names)) and set(names) == set(event.fields), key
        raw = encode(layout, event.fields)
        proto = _proto_event(event.module, event.name, raw)
        decoded = event_from_proto(proto, [PACKAGE])
        assert decoded is not None and dict(decoded.fields) == dict(event.fields), key
        seen.add(key)
    assert seen == set(ECONOMICS_EVENT_LAYOUTS)
    getters = {
        "SubscriptionOffer": (ledger.get_subscription_offer, ids["offer"]),
        "Subscription": (ledger.get_subscription, ids["sub"]),
        "SponsorPool": (ledger.get_sponsor_pool, ids["pool"]),
        "SponsorLane": (ledger.get_sponsor_lane, ids["lane"]),
        "TicketSale": (ledger.get_ticket_sale, ids["sale"]),
        "RetentionTerms": (ledger.get_retention_terms, ids["terms"]),
        "RetainedRecord": (ledger.get_retained_record, ids["record"]),
    }
    assert set(getters) == set(ECONOMICS_OBJECT_LAYOUTS)
    for struct, (get, object_id) in getters.items():
        obj = get(object_id)
        # (the Move field ``version`` is the view's package_version; its version, Sui's)
        fields = {**vars(obj), "id": obj.id, "version": obj.package_version}
        if struct == "SponsorLane":
            fields["pledges"] = {"id": "0x" + "77" * 32, "size": fields["pledges"]}
        holders = fields.get("holders")
        if struct == "TicketSale":
            fields["holders"] = {"id": "0x" + "78" * 32, "size": len(holders or {})}
        raw = encode(ECONOMICS_OBJECT_LAYOUTS[struct], fields)
        assert decode_economics_object(struct, obj.version, raw, holders) == obj, struct
    assert conserved(ledger)


def _proto_event(module: str, name: str, raw: bytes) -> Any:
    import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot

    return sui_prot.Event(
        package_id=PACKAGE,
        module=module,
        sender=SENDER.sui_address,
        event_type=f"{PACKAGE}::{module}::{name}",
        contents=sui_prot.Bcs(name=name, value=raw),
        transaction_digest="Digest111",
    )


# -- SuiLedger without a node, and on a live one ---------------------------------------------------


def test_sui_ledger_payment_models_need_a_node() -> None:
    from dtp.errors import InvalidArgument
    from dtp.ledger.sui import SuiConfig, SuiLedger
    from dtp.ledger.sui._client import LedgerUnavailable
    from tests.support.ports import free_port

    ledger = SuiLedger(SuiConfig(f"http://127.0.0.1:{free_port()}", PACKAGE, timeout=5))
    with pytest.raises(LedgerUnavailable):
        ledger.get_subscription("0x" + "b2" * 32)
    with pytest.raises(LedgerUnavailable):
        ledger.create_ticket_sale(SENDER, "show", 1, 1, 0, 10)
    with pytest.raises(InvalidArgument):  # refused before any network access
        ledger.fund_sponsor_pool(SENDER, "0x" + "b3" * 32, -1)
    ledger.close()


def test_live_ticket_sale_cancel_refund(sui_network: SuiNetwork) -> None:
    """On the node tests/support/sui_network.py gives: the stand-in, or a configured real one."""
    organizer = sui_network.funder
    sui = sui_network.ledger(organizer)
    sale = sui.create_ticket_sale(organizer, "live", 1_000, 2, 0, sui.clock_ms() + 600_000)
    sui.buy_tickets(organizer, sale, 1)
    assert sui.get_ticket_sale(sale).holders == {organizer.sui_address: 1}
    with pytest.raises(PaymentModelError):
        sui.go_on_air(organizer, sale)  # EThresholdNotMet: 1 of 2 sold
    sui.cancel_ticket_sale(organizer, sale)
    assert sui.refund_tickets(organizer, sale) == 1_000
    assert sui.get_ticket_sale(sale).sold == 0


def regenerate() -> None:
    """Rewrite tests/golden/economics_transactions.json from the current builders."""
    write_golden(
        GOLDEN,
        (
            "the dtp.ledger.sui._tx payment-model builders (subscription, sponsor, tickets, "
            "retention) for the fixed inputs of tests/ledger/test_payment_models.py"
        ),
        build_all(),
    )


if __name__ == "__main__":
    regenerate_main(regenerate)
