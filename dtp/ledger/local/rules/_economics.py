"""LocalLedger rules of the payment models: ``dtp::subscription``, ``dtp::sponsor``,
``dtp::tickets`` (and the ticketed ``broadcast::create_ticketed``), ``dtp::retention`` and
``dtp::payment`` (docs/escrow.md §9, §13-16, §20), with the checks in the order of the
``.move`` files. Each joins :data:`dtp.ledger.local.rules.FUNCTIONS` (``@rule``) as
:mod:`dtp.ledger.local._store` imports this module.

Balances (``funds``, ``deposit``) are plain ints, like the other rules' balances. Tables
(a SponsorLane's pledges, a TicketSale's holders) are dicts keyed by ID or address.
"""

from __future__ import annotations

from typing import Any, Final

from dtp.errors import move_error
from dtp.ledger._economics import (
    BPS,
    ECONOMICS_MODULES,
    MAX_PAYMENT_MEMO,
    MAX_RETENTION_MS,
    MAX_SPONSOR_LANES,
    bps_share,
    sponsor_pledge,
)
from dtp.ledger.local.rules._broadcast import new_broadcast
from dtp.ledger.local.rules._common import SHARED, Exec, add_u64, rule, utf8
from dtp.ledger.local.rules._transport_control import tc_end_prepaid, tc_open

__all__ = ["OBJECT_TYPES"]

#: Move types of the payment-model objects, by struct name.
OBJECT_TYPES: Final = {name: f"dtp::{module}::{name}" for name, module in ECONOMICS_MODULES.items()}


def _coin_exists(x: Exec, amount: int) -> None:
    """The transaction's ``SplitCoins`` runs before the Move call (so a short balance fails
    first), but the coin is consumed by ``transport_control``'s open, which takes it."""
    x.take_coin(amount)
    x.credits[x.sender] += amount


def _assert_provider_service(x: Exec, module: str, host_id: str, port: int) -> None:
    """The terms a host's authority offers for one of its services: the sender is the
    Host's authority (``module::ENotProvider``), the port one of its services."""
    host = x.load(host_id, "Host")
    x.require_sender(host["authority"], module, "ENotProvider", f"host {host_id}")
    if str(port) not in host["services"]:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")


# -- subscription -----------------------------------------------------------------------------


@rule("subscription::create_offer")
def offer_create(x: Exec, host_id: str, port: int, price: int, period: int) -> str:
    _assert_provider_service(x, "subscription", host_id, port)
    if price == 0 or period == 0:
        raise move_error("subscription", "EInvalidTerms", f"price {price}, period {period}")
    # the offer's terms, which its event repeats
    terms = {
        "host": host_id,
        "port": port,
        "provider": x.sender,
        "price_per_epoch": price,
        "period_epochs": period,
    }
    withdrawn = {"withdrawn": False, "withdrawn_epoch": 0}
    offer_id = x.create("SubscriptionOffer", SHARED, {**terms, **withdrawn})
    x.emit("subscription", "SubscriptionOfferCreated", {"offer": offer_id, **terms})
    return offer_id


def _assert_epochs(offer: dict[str, Any], epochs: int) -> None:
    if epochs == 0 or epochs % offer["period_epochs"] != 0:
        raise move_error(
            "subscription",
            "EInvalidEpochs",
            f"{epochs} epochs; the period is {offer['period_epochs']}",
        )


def _assert_payment(paid: int, epochs: int, price: int) -> None:
    if paid != epochs * price:
        raise move_error(
            "subscription", "EWrongPayment", f"{paid} MIST for {epochs} epochs at {price}"
        )


def _assert_offer_selling(
    offer: dict[str, Any], offer_id: str, host: dict[str, Any], host_id: str
) -> None:
    """``subscription::assert_selling``: the offer's host, not withdrawn, and its provider
    still the host's authority (what it sells is paid to the one whose server serves it)."""
    if host_id != offer["host"]:
        raise move_error("subscription", "EWrongHost", f"offer {offer_id} is for {offer['host']}")
    if offer["withdrawn"]:
        raise move_error("subscription", "EOfferWithdrawn", f"offer {offer_id}")
    _assert_provider("subscription", ("offer", offer_id, offer), host, host_id)


def _assert_provider(
    module: str, made: tuple[str, str, dict[str, Any]], host: dict[str, Any], host_id: str
) -> None:
    """``module::EProviderChanged`` unless the provider who made the offer or pool
    ``made`` (its kind, ID and fields) is still the host's authority."""
    what, made_id, fields = made
    if host["authority"] != fields["provider"]:
        raise move_error(
            module,
            "EProviderChanged",
            f"host {host_id} is {host['authority']}'s now, {what} {made_id} {fields['provider']}'s",
        )


@rule("subscription::subscribe")
def subscribe(x: Exec, offer_id: str, host_id: str, epochs: int, paid: int) -> str:
    offer = x.load(offer_id, "SubscriptionOffer")
    host = x.load(host_id, "Host")
    x.take_coin(paid)
    _assert_offer_selling(offer, offer_id, host, host_id)
    _assert_epochs(offer, epochs)
    _assert_payment(paid, epochs, offer["price_per_epoch"])
    start = x.epoch
    expires = add_u64(start, epochs)
    sub_id = x.create(
        "Subscription",
        SHARED,
        {
            "offer": offer_id,
            "holder": x.sender,
            "price_per_epoch": offer["price_per_epoch"],
            "start_epoch": start,
            "expires_epoch": expires,
            "claimed_epochs": 0,
            "funds": paid,
            "refunded": False,
        },
    )
    x.emit(
        "subscription",
        "Subscribed",
        {
            "subscription": sub_id,
            "offer": offer_id,
            "holder": x.sender,
            "start_epoch": start,
            "expires_epoch": expires,
            "paid": paid,
        },
    )
    return sub_id


def _earned_epochs(sub: dict[str, Any], offer: dict[str, Any], epoch: int) -> int:
    now = epoch
    if offer["withdrawn"] and offer["withdrawn_epoch"] < now:
        now = offer["withdrawn_epoch"]
    end = min(now + 1, sub["expires_epoch"])
    return 0 if end <= sub["start_epoch"] else int(end - sub["start_epoch"])


def _pay_out(x: Exec, sub: dict[str, Any], sub_id: str, epochs: int, event: str, to: str) -> int:
    """Pay ``epochs`` of the subscription's money to its provider (``event``
    SubscriptionClaimed) or its holder (SubscriptionRefunded), and say so."""
    amount: int = epochs * sub["price_per_epoch"]
    sub["funds"] -= amount
    x.pay(to, amount)
    role = "provider" if event == "SubscriptionClaimed" else "holder"
    fields = {"subscription": sub_id, role: to, "epochs": epochs, "amount": amount}
    x.emit("subscription", event, fields)
    return amount


def _sub_and_offer(
    x: Exec, sub_id: str, offer_id: str, role: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    sub = x.load(sub_id, "Subscription")
    offer = x.load(offer_id, "SubscriptionOffer")
    if role == "provider":
        x.require_sender(offer["provider"], "subscription", "ENotProvider", f"offer {offer_id}")
    if role == "holder":
        x.require_sender(sub["holder"], "subscription", "ENotHolder", f"subscription {sub_id}")
    if sub["offer"] != offer_id:
        raise move_error("subscription", "EWrongOffer", f"subscription {sub_id}")
    return sub, offer


@rule("subscription::claim")
def subscription_claim(x: Exec, sub_id: str, offer_id: str) -> int:
    sub, offer = _sub_and_offer(x, sub_id, offer_id, "provider")
    epochs = _earned_epochs(sub, offer, x.epoch) - sub["claimed_epochs"]
    amount = _pay_out(x, sub, sub_id, epochs, "SubscriptionClaimed", offer["provider"])
    sub["claimed_epochs"] += epochs
    return amount


@rule("subscription::renew")
def subscription_renew(
    x: Exec, sub_id: str, offer_id: str, host_id: str, epochs: int, paid: int
) -> int:
    x.load(sub_id, "Subscription")
    x.load(offer_id, "SubscriptionOffer")
    host = x.load(host_id, "Host")
    x.take_coin(paid)
    sub, offer = _sub_and_offer(x, sub_id, offer_id, "holder")
    _assert_offer_selling(offer, offer_id, host, host_id)
    _assert_epochs(offer, epochs)
    _assert_payment(paid, epochs, sub["price_per_epoch"])
    if sub["expires_epoch"] <= x.epoch:
        due = sub["expires_epoch"] - sub["start_epoch"] - sub["claimed_epochs"]
        _pay_out(x, sub, sub_id, due, "SubscriptionClaimed", offer["provider"])
        sub["start_epoch"] = x.epoch
        sub["expires_epoch"] = x.epoch
        sub["claimed_epochs"] = 0
    sub["funds"] += paid
    sub["expires_epoch"] = add_u64(sub["expires_epoch"], epochs)
    x.emit(
        "subscription",
        "SubscriptionRenewed",
        {
            "subscription": sub_id,
            "start_epoch": sub["start_epoch"],
            "expires_epoch": sub["expires_epoch"],
            "paid": paid,
        },
    )
    return int(sub["expires_epoch"])


@rule("subscription::withdraw_offer")
def offer_withdraw(x: Exec, offer_id: str, host_id: str) -> None:
    """``subscription::withdraw_offer``: by the provider, or by anyone once the host has
    another authority (the offer sells nothing more; the withdrawal stops its earning)."""
    offer = x.load(offer_id, "SubscriptionOffer")
    host = x.load(host_id, "Host")
    if host_id != offer["host"]:
        raise move_error("subscription", "EWrongHost", f"offer {offer_id} is for {offer['host']}")
    if x.sender != offer["provider"] and host["authority"] == offer["provider"]:
        raise move_error(
            "subscription",
            "ENotProvider",
            f"{x.sender} on offer {offer_id}, whose provider is still host {host_id}'s authority",
        )
    if offer["withdrawn"]:
        raise move_error("subscription", "EOfferWithdrawn", f"offer {offer_id}")
    offer["withdrawn"] = True
    offer["withdrawn_epoch"] = x.epoch
    x.emit("subscription", "SubscriptionOfferWithdrawn", {"offer": offer_id, "epoch": x.epoch})


@rule("subscription::refund")
def subscription_refund(x: Exec, sub_id: str, offer_id: str) -> int:
    sub, offer = _sub_and_offer(x, sub_id, offer_id, "holder")
    if not offer["withdrawn"]:
        raise move_error("subscription", "ENotWithdrawn", f"offer {offer_id}")
    if sub["refunded"]:
        raise move_error("subscription", "EAlreadyRefunded", f"subscription {sub_id}")
    cut = max(sub["start_epoch"], min(sub["expires_epoch"], offer["withdrawn_epoch"] + 1))
    epochs = sub["expires_epoch"] - cut
    amount = _pay_out(x, sub, sub_id, epochs, "SubscriptionRefunded", sub["holder"])
    sub["expires_epoch"] = cut
    sub["refunded"] = True
    return amount


@rule("subscription::open_connection")
def subscription_open(
    x: Exec, sub_id: str, offer_id: str, host_id: str, cap_id: str, key: bytes, amount: int
) -> str:
    # Every input object is checked before the coin is split and the call runs.
    x.load(sub_id, "Subscription")
    x.load(offer_id, "SubscriptionOffer")
    host = x.load(host_id, "Host")
    x.load(cap_id, "SpendingCap")
    _coin_exists(x, amount)
    sub, offer = _sub_and_offer(x, sub_id, offer_id, "holder")
    _assert_offer_selling(offer, offer_id, host, host_id)
    if not sub["start_epoch"] <= x.epoch < sub["expires_epoch"]:
        raise move_error(
            "subscription",
            "ESubscriptionExpired",
            f"subscription {sub_id} covers epochs {sub['start_epoch']}.."
            f"{sub['expires_epoch'] - 1}, now {x.epoch}",
        )
    connection = tc_open(x, host_id, offer["port"], cap_id, key, amount, subscription=sub_id)
    x.emit(
        "subscription",
        "SubscribedConnectionOpened",
        {"subscription": sub_id, "connection": connection},
    )
    return connection


def subscription_over(sub: dict[str, Any], offer: dict[str, Any], epoch: int) -> bool:
    """``subscription::is_over``: not live in ``epoch``, or the offer withdrawn."""
    return bool(offer["withdrawn"]) or not sub["start_epoch"] <= epoch < sub["expires_epoch"]


@rule("subscription::end_connection")
def subscription_end(
    x: Exec, sub_id: str, offer_id: str, tc_id: str, escrow_id: str, cap_id: str
) -> int:
    """``subscription::end_connection``: anyone ends a connection of a subscription
    that is over (closed and settled at once, nothing owed)."""
    sub = x.load(sub_id, "Subscription")
    offer = x.load(offer_id, "SubscriptionOffer")
    tc = x.load(tc_id, "TransportControl")
    x.load(escrow_id, "Escrow")
    x.load(cap_id, "SpendingCap")
    if sub["offer"] != offer_id:
        raise move_error("subscription", "EWrongOffer", f"subscription {sub_id}")
    if tc.get("subscription") != sub_id:
        raise move_error(
            "subscription", "ENotSubscribed", f"connection {tc_id} with subscription {sub_id}"
        )
    if not subscription_over(sub, offer, x.epoch):
        raise move_error(
            "subscription",
            "ESubscriptionLive",
            f"subscription {sub_id} covers epochs {sub['start_epoch']}.."
            f"{sub['expires_epoch'] - 1}, now {x.epoch}",
        )
    refunded = tc_end_prepaid(x, tc, tc_id, escrow_id, cap_id)
    x.emit(
        "subscription",
        "SubscribedConnectionEnded",
        {"subscription": sub_id, "connection": tc_id, "by": x.sender, "refunded": refunded},
    )
    return refunded


# -- sponsor ---------------------------------------------------------------------------------


def check_lane(pool_id: str, lane_id: str, lane: dict[str, Any]) -> None:
    """Every call with a lane first checks it is one of the pool's (``EWrongLane``)."""
    if lane["pool"] != pool_id:
        raise move_error("sponsor", "EWrongLane", f"lane {lane_id} is pool {lane['pool']}'s")


@rule("sponsor::create")
def sponsor_create(
    x: Exec, host_id: str, port: int, share_bps: int, max_pledge: int, lanes: int
) -> str:
    _assert_provider_service(x, "sponsor", host_id, port)
    if not 0 < share_bps <= BPS:
        raise move_error("sponsor", "EInvalidShare", f"got {share_bps}")
    if not 0 < lanes <= MAX_SPONSOR_LANES:
        raise move_error("sponsor", "EInvalidLanes", f"got {lanes}")
    lane_ids: list[str] = []
    pool = {
        "host": host_id,
        "port": port,
        "provider": x.sender,
        "share_bps": share_bps,
        "max_pledge": max_pledge,
        "lanes": lane_ids,
    }
    # the pool's UID first, then its lanes', as Move makes them
    pool_id = x.create("SponsorPool", SHARED, pool)
    for _ in range(lanes):
        lane = {"pool": pool_id, "funds": 0, "reserved": 0, "pledges": {}}
        lane_ids.append(x.create("SponsorLane", SHARED, lane))
    x.emit(
        "sponsor",
        "SponsorPoolCreated",
        {
            "pool": pool_id,
            "host": host_id,
            "port": port,
            "provider": x.sender,
            "share_bps": share_bps,
            "max_pledge": max_pledge,
            "lanes": list(lane_ids),
        },
    )
    return pool_id


@rule("sponsor::fund")
def sponsor_fund(x: Exec, pool_id: str, lane_id: str, amount: int) -> None:
    x.load(pool_id, "SponsorPool")
    lane = x.load(lane_id, "SponsorLane")
    x.take_coin(amount)
    check_lane(pool_id, lane_id, lane)
    if amount == 0:
        raise move_error("sponsor", "EZeroAmount", f"lane {lane_id}")
    lane["funds"] = add_u64(lane["funds"], amount)
    x.emit(
        "sponsor",
        "SponsorPoolFunded",
        {"pool": pool_id, "lane": lane_id, "amount": amount, "funds": lane["funds"]},
    )


@rule("sponsor::withdraw")
def sponsor_withdraw(x: Exec, pool_id: str, lane_id: str, amount: int) -> None:
    pool = x.load(pool_id, "SponsorPool")
    lane = x.load(lane_id, "SponsorLane")
    check_lane(pool_id, lane_id, lane)
    x.require_sender(pool["provider"], "sponsor", "ENotProvider", f"pool {pool_id}")
    if amount == 0:
        raise move_error("sponsor", "EZeroAmount", f"lane {lane_id}")
    available = lane["funds"] - lane["reserved"]
    if amount > available:
        raise move_error(
            "sponsor",
            "ESponsorUnfunded",
            f"{amount} MIST asked, lane {lane_id} has {available} unpledged",
        )
    lane["funds"] -= amount
    x.pay(pool["provider"], amount)
    x.emit(
        "sponsor",
        "SponsorPoolWithdrawn",
        {"pool": pool_id, "lane": lane_id, "amount": amount, "funds": lane["funds"]},
    )


@rule("sponsor::set_max_pledge")
def sponsor_set_max_pledge(x: Exec, pool_id: str, max_pledge: int) -> None:
    """``sponsor::set_max_pledge``: binds the connections opened from now on."""
    pool = x.load(pool_id, "SponsorPool")
    x.require_sender(pool["provider"], "sponsor", "ENotProvider", f"pool {pool_id}")
    pool["max_pledge"] = max_pledge
    x.emit("sponsor", "SponsorPledgeLimitChanged", {"pool": pool_id, "max_pledge": max_pledge})


@rule("sponsor::open_connection")
def sponsor_open(
    x: Exec, pool_id: str, lane_id: str, host_id: str, cap_id: str, key: bytes, amount: int
) -> str:
    pool = x.load(pool_id, "SponsorPool")
    lane = x.load(lane_id, "SponsorLane")
    host = x.load(host_id, "Host")
    x.load(cap_id, "SpendingCap")
    _coin_exists(x, amount)
    check_lane(pool_id, lane_id, lane)
    if host_id != pool["host"]:
        raise move_error("sponsor", "EWrongHost", f"pool {pool_id} is for host {pool['host']}")
    # the connection's fees go to the authority now: only its own pool pays them back
    _assert_provider("sponsor", ("pool", pool_id, pool), host, host_id)
    pledge = sponsor_pledge(amount, pool["share_bps"], pool["max_pledge"])
    available = lane["funds"] - lane["reserved"]
    if pledge > available:
        raise move_error(
            "sponsor",
            "ESponsorUnfunded",
            f"lane {lane_id} of pool {pool_id} must pledge {pledge} MIST and has "
            f"{available} unpledged",
        )
    connection = tc_open(x, host_id, pool["port"], cap_id, key, amount, sponsor=lane_id)
    lane["pledges"][connection] = pledge
    lane["reserved"] += pledge
    x.emit(
        "sponsor",
        "SponsoredConnectionOpened",
        {
            "pool": pool_id,
            "lane": lane_id,
            "connection": connection,
            "pledge": pledge,
            "share_bps": pool["share_bps"],
        },
    )
    return connection


@rule("sponsor::reimburse")
def sponsor_reimburse(x: Exec, pool_id: str, lane_id: str, tc_id: str, escrow_id: str) -> int:
    pool = x.load(pool_id, "SponsorPool")
    lane = x.load(lane_id, "SponsorLane")
    tc = x.load(tc_id, "TransportControl")
    escrow = x.load(escrow_id, "Escrow")
    check_lane(pool_id, lane_id, lane)
    if tc_id not in lane["pledges"]:
        raise move_error(
            "sponsor",
            "ENotSponsored",
            f"lane {lane_id} holds no pledge for connection {tc_id} (not opened through "
            "it, or reimbursed)",
        )
    if escrow_id != tc["escrow"]:
        raise move_error("sponsor", "EWrongEscrow", f"connection {tc_id} uses {tc['escrow']}")
    if not tc["settled"]:
        raise move_error("sponsor", "ENotSettled", f"connection {tc_id}")
    return pay_pledge(x, pool, pool_id, lane, lane_id, tc, tc_id, escrow)


def pay_pledge(
    x: Exec,
    pool: dict[str, Any],
    pool_id: str,
    lane: dict[str, Any],
    lane_id: str,
    tc: dict[str, Any],
    tc_id: str,
    escrow: dict[str, Any],
) -> int:
    """``sponsor::pay_pledge``: the lane's pledge to the settled connection removed, its
    client paid ``min(pledge, claimed * share_bps / 10000)`` from the lane, the rest
    released."""
    pledge: int = lane["pledges"].pop(tc_id)
    amount = min(bps_share(escrow["claimed"], pool["share_bps"]), pledge)
    lane["reserved"] -= pledge
    lane["funds"] -= amount
    x.pay(tc["client"], amount)
    x.emit(
        "sponsor",
        "SponsorReimbursed",
        {
            "pool": pool_id,
            "lane": lane_id,
            "connection": tc_id,
            "client": tc["client"],
            "claimed": escrow["claimed"],
            "amount": amount,
        },
    )
    return amount


# -- tickets ---------------------------------------------------------------------------------


@rule("tickets::create")
def tickets_create(
    x: Exec, raw_title: bytes, price: int, min_tickets: int, max_tickets: int, deadline_ms: int
) -> str:
    if (
        price == 0
        or min_tickets == 0
        or (max_tickets != 0 and max_tickets < min_tickets)
        or deadline_ms <= x.now_ms
    ):
        raise move_error(
            "tickets",
            "EInvalidTerms",
            f"price {price}, tickets {min_tickets}..{max_tickets}, deadline {deadline_ms} ms "
            f"(now {x.now_ms})",
        )
    # the sale's terms, which its event repeats
    terms = {
        "organizer": x.sender,
        "title": utf8(raw_title, "title"),
        "ticket_price": price,
        "min_tickets": min_tickets,
        "max_tickets": max_tickets,
        "deadline_ms": deadline_ms,
    }
    unsold = {"sold": 0, "holders": {}, "funds": 0, "on_air": False, "cancelled": False}
    sale_id = x.create("TicketSale", SHARED, {**terms, **unsold})
    x.emit("tickets", "TicketSaleCreated", {"sale": sale_id, **terms})
    return sale_id


def _assert_selling(x: Exec, sale: dict[str, Any], sale_id: str) -> None:
    if sale["cancelled"]:
        raise move_error("tickets", "ECancelled", f"sale {sale_id}")
    if sale["on_air"]:
        raise move_error("tickets", "EAlreadyOnAir", f"sale {sale_id}")
    if x.now_ms > sale["deadline_ms"]:
        raise move_error(
            "tickets", "ESaleClosed", f"deadline {sale['deadline_ms']} ms, now {x.now_ms} ms"
        )


@rule("tickets::go_on_air")
def tickets_go_on_air(x: Exec, sale_id: str) -> int:
    sale = x.load(sale_id, "TicketSale")
    x.require_sender(sale["organizer"], "tickets", "ENotOrganizer", f"sale {sale_id}")
    _assert_selling(x, sale, sale_id)
    if sale["sold"] < sale["min_tickets"]:
        raise move_error(
            "tickets",
            "EThresholdNotMet",
            f"{sale['sold']} of {sale['min_tickets']} tickets sold for sale {sale_id}",
        )
    sale["on_air"] = True
    revenue = x.pay_all(sale, "funds", sale["organizer"])
    x.emit(
        "tickets",
        "TicketedEventOnAir",
        {"sale": sale_id, "sold": sale["sold"], "revenue": revenue},
    )
    return revenue


@rule("tickets::cancel")
def tickets_cancel(x: Exec, sale_id: str) -> None:
    sale = x.load(sale_id, "TicketSale")
    x.require_sender(sale["organizer"], "tickets", "ENotOrganizer", f"sale {sale_id}")
    if sale["cancelled"]:
        raise move_error("tickets", "ECancelled", f"sale {sale_id}")
    if sale["on_air"]:
        raise move_error("tickets", "EAlreadyOnAir", f"sale {sale_id}")
    sale["cancelled"] = True
    x.emit("tickets", "TicketSaleCancelled", {"sale": sale_id, "sold": sale["sold"]})


@rule("tickets::buy")
def tickets_buy(x: Exec, sale_id: str, count: int, paid: int) -> None:
    sale = x.load(sale_id, "TicketSale")
    x.take_coin(paid)
    _assert_selling(x, sale, sale_id)
    if count == 0 or paid != count * sale["ticket_price"]:
        raise move_error(
            "tickets", "EWrongPayment", f"{paid} MIST for {count} at {sale['ticket_price']}"
        )
    if sale["max_tickets"] != 0 and sale["sold"] + count > sale["max_tickets"]:
        raise move_error(
            "tickets",
            "ESoldOut",
            f"{sale['sold']} of {sale['max_tickets']} sold, {count} more asked",
        )
    sale["funds"] += paid
    sale["holders"][x.sender] = sale["holders"].get(x.sender, 0) + count
    sale["sold"] += count
    x.emit(
        "tickets",
        "TicketsBought",
        {"sale": sale_id, "buyer": x.sender, "count": count, "sold": sale["sold"]},
    )


@rule("tickets::refund")
def tickets_refund(x: Exec, sale_id: str) -> int:
    sale = x.load(sale_id, "TicketSale")
    missed = not sale["on_air"] and x.now_ms > sale["deadline_ms"]
    if not (sale["cancelled"] or missed):
        raise move_error("tickets", "ERefundNotOpen", f"sale {sale_id}")
    if x.sender not in sale["holders"]:
        raise move_error("tickets", "ENoTickets", f"{x.sender} on sale {sale_id}")
    count: int = sale["holders"].pop(x.sender)
    amount: int = count * sale["ticket_price"]
    sale["sold"] -= count
    sale["funds"] -= amount
    x.pay(x.sender, amount)
    x.emit(
        "tickets",
        "TicketsRefunded",
        {"sale": sale_id, "buyer": x.sender, "count": count, "amount": amount},
    )
    return amount


@rule("broadcast::create_ticketed")
def broadcast_create_ticketed(
    x: Exec, sale_id: str, raw_channel: bytes, slot_price: int, slot_ms: int
) -> str:
    """``broadcast::create_ticketed``: a broadcast for the holders of ``sale_id``'s
    tickets, by the sale's organizer only."""
    sale = x.load(sale_id, "TicketSale")
    x.require_sender(sale["organizer"], "broadcast", "ENotOrganizer", f"sale {sale_id}")
    return new_broadcast(x, raw_channel, slot_price, slot_ms, sale_id)


# -- retention -------------------------------------------------------------------------------


@rule("retention::create_terms")
def retention_create_terms(
    x: Exec, host_id: str, port: int, retention_ms: int, price_per_byte: int
) -> str:
    _assert_provider_service(x, "retention", host_id, port)
    if retention_ms > MAX_RETENTION_MS:
        raise move_error("retention", "EInvalidTerms", f"{retention_ms} ms > {MAX_RETENTION_MS} ms")
    terms = {
        "host": host_id,
        "port": port,
        "retention_ms": retention_ms,
        "storage_price_per_byte": price_per_byte,
    }
    terms_id = x.create("RetentionTerms", SHARED, {**terms, "retired": False})
    x.emit("retention", "RetentionTermsCreated", {"terms": terms_id, **terms})
    return terms_id


@rule("retention::retire_terms")
def retention_retire_terms(x: Exec, terms_id: str, host_id: str) -> None:
    """``retention::retire_terms``: the provider stops offering the terms."""
    terms = x.load(terms_id, "RetentionTerms")
    host = x.load(host_id, "Host")
    x.require_sender(host["authority"], "retention", "ENotProvider", f"host {host_id}")
    if terms["host"] != host_id:
        raise move_error("retention", "EWrongTerms", f"terms {terms_id} are not of host {host_id}")
    if terms.get("retired", False):
        raise move_error("retention", "ETermsRetired", f"terms {terms_id}")
    terms["retired"] = True
    x.emit(
        "retention",
        "RetentionTermsRetired",
        {"terms": terms_id, "host": terms["host"], "port": terms["port"]},
    )


@rule("retention::replace_terms")
def retention_replace_terms(
    x: Exec, terms_id: str, host_id: str, retention_ms: int, price_per_byte: int
) -> str:
    """``retention::replace_terms``: retire the terms and create their successor."""
    retention_retire_terms(x, terms_id, host_id)
    port = x.load(terms_id, "RetentionTerms")["port"]
    return retention_create_terms(x, host_id, port, retention_ms, price_per_byte)


@rule("retention::send")
def retention_send(
    x: Exec, pipe_id: str, tc_id: str, terms_id: str, inner: int, data: bytes, amount: int
) -> str:
    from dtp.ledger.local.rules._pipe import pipe_send

    pipe = x.load(pipe_id, "Pipe")
    tc = x.load(tc_id, "TransportControl")
    terms = x.load(terms_id, "RetentionTerms")
    x.take_coin(amount)
    if pipe["connection"] != tc_id:
        raise move_error("retention", "EWrongConnection", f"pipe {pipe_id} is not of {tc_id}")
    if tc["state"]["kind"] != "Open":
        raise move_error(
            "retention", "EConnectionNotOpen", f"connection {tc_id} is {tc['state']['kind']}"
        )
    if terms["host"] != tc["host"] or terms["port"] != tc["port"]:
        raise move_error("retention", "EWrongTerms", f"terms {terms_id} for connection {tc_id}")
    if terms.get("retired", False):
        raise move_error("retention", "ETermsRetired", f"terms {terms_id}")
    if amount != len(data) * terms["storage_price_per_byte"]:
        raise move_error(
            "retention",
            "EWrongDeposit",
            f"{amount} MIST for {len(data)} bytes at {terms['storage_price_per_byte']}/byte",
        )
    seq = pipe_send(x, pipe_id, inner, data)
    receiver = tc["server"] if x.sender == tc["client"] else tc["client"]
    delete_after = add_u64(x.now_ms, terms["retention_ms"])
    reclaim_after = add_u64(delete_after, terms["retention_ms"])
    # where the data was sent, which the record's event repeats
    sent = {
        "connection": tc_id,
        "pipe": pipe_id,
        "inner": inner,
        "seq": seq,
        "sender": x.sender,
        "receiver": receiver,
    }
    record_id = x.create(
        "RetainedRecord",
        SHARED,
        {
            **sent,
            "data": data,
            "stored_at_ms": x.now_ms,
            "retention_ms": terms["retention_ms"],
            "deposit": amount,
            "consumed": False,
        },
    )
    x.emit(
        "retention",
        "RecordRetained",
        {
            "record": record_id,
            **sent,
            "deposit": amount,
            "delete_after_ms": delete_after,
            "reclaim_after_ms": reclaim_after,
        },
    )
    return record_id


@rule("retention::confirm")
def retention_confirm(x: Exec, record_id: str) -> None:
    record = x.load(record_id, "RetainedRecord")
    x.require_sender(record["receiver"], "retention", "ENotReceiver", f"record {record_id}")
    if record["consumed"]:
        raise move_error("retention", "EAlreadyConsumed", f"record {record_id}")
    record["consumed"] = True
    x.emit("retention", "RecordConsumed", {"record": record_id, "receiver": record["receiver"]})


@rule("retention::delete")
def retention_delete(x: Exec, record_id: str) -> int:
    record = x.load(record_id, "RetainedRecord")
    x.require_sender(record["sender"], "retention", "ENotSender", f"record {record_id}")
    # unconfirmed, the record goes once its retention time has passed twice over: the
    # receiver cannot hold the sender's deposit longer (docs/escrow.md §16)
    reclaim_after = record["stored_at_ms"] + 2 * record["retention_ms"]
    if not record["consumed"] and x.now_ms < reclaim_after:
        raise move_error(
            "retention",
            "ENotConsumed",
            f"record {record_id}, unconfirmed, may be reclaimed from {reclaim_after} ms, "
            f"now {x.now_ms} ms",
        )
    due = record["stored_at_ms"] + record["retention_ms"]
    if x.now_ms < due:
        raise move_error(
            "retention",
            "ERetentionNotElapsed",
            f"record {record_id} may be deleted from {due} ms, now {x.now_ms} ms",
        )
    refunded = x.pay_all(record, "deposit", record["sender"])
    x.delete(record_id)
    x.emit(
        "retention",
        "RecordDeleted",
        {"record": record_id, "sender": record["sender"], "refunded": refunded},
    )
    return refunded


# -- payment ---------------------------------------------------------------------------------


@rule("payment::pay")
def payment_pay(x: Exec, amount: int, recipient: str, memo: bytes) -> None:
    """``payment::pay``: the coin goes to ``recipient`` at once."""
    x.take_coin(amount)
    if amount == 0:
        raise move_error("payment", "EZeroPayment", f"from {x.sender} to {recipient}")
    if len(memo) > MAX_PAYMENT_MEMO:
        raise move_error("payment", "EMemoTooLong", f"{len(memo)} > {MAX_PAYMENT_MEMO} bytes")
    x.pay(recipient, amount)
    x.emit(
        "payment",
        "PaymentSent",
        {"from": x.sender, "to": recipient, "amount": amount, "memo": memo},
    )
