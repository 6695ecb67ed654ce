"""The entry functions of ``move/dtp`` that the SDK calls, each with the kinds of its
arguments: the one table both built-in ledgers read. SuiLedger's builders
(:mod:`dtp.ledger.sui._tx`) make a row's transaction from it; LocalLedger checks a call's
arguments against it (:data:`dtp.ledger.local.rules.FUNCTIONS`) before its rule runs."""

from __future__ import annotations

from typing import Final, NamedTuple

from dtp.ledger._versions import ADMIN_CAP, MIGRATE, MIGRATE_BUILDERS

__all__ = [
    "COORDINATION_CALLS",
    "ECONOMICS_CALLS",
    "LEDGER_CALLS",
    "MESSAGING_CALLS",
    "MOVE_CALLS",
    "OBJECT_KINDS",
    "Entry",
]


class Entry(NamedTuple):
    """A builder's Move call: ``module::function`` and its arguments' kinds in the order
    the call takes them, which is the order their inputs join the transaction (and so
    fixes its bytes): "mut"/"imm" a shared object taken ``&mut``/``&`` (or by value:
    "mut"), "owned" an owned one, each with its struct; "clock" the Clock (no value
    given), "coin" ``SplitCoins(GasCoin, [amount])``, "sla" ``host::new_sla``, "receipt"
    its five fields, else a pure value ("utf8": a ``vector<u8>`` the Move code makes a
    String); the text names the value in errors. The builder takes the values (all but
    the Clock's) in that order, or in ``order``'s: the builder's position of each of the
    call's values."""

    module: str
    function: str
    args: tuple[tuple[str, str], ...]
    order: tuple[int, ...] | None = None


#: The kinds of object arguments: the text of each is its struct.
OBJECT_KINDS: Final = frozenset({"mut", "imm", "owned"})


def _entry(signature: str, order: tuple[int, ...] | None = None) -> Entry:
    """The row of ``signature``, ``"module::function(arg, ...)"``, each argument its kind
    then its text (``mut Host``, ``u64 max_pledge``, ``clock``)."""
    target, _, args = signature.removesuffix(")").partition("(")
    module, function = target.split("::")
    parts = [arg.partition(" ") for arg in args.split(", ") if arg]
    return Entry(module, function, tuple((kind, what) for kind, _, what in parts), order)


def _open(signature: str, key: str = "client_public_key") -> Entry:
    """An open's row: the objects of ``signature``, then the client's key, the deposit
    and the Clock; its builder takes the deposit before the key, as the Ledger methods do."""
    head = signature.removesuffix(")")
    n = head.count(", ") + 1
    return _entry(f"{head}, bytes {key}, coin the deposit, clock)", (*range(n), n + 1, n))


#: A service's port, as each call on one names it.
_PORT: Final = "u16 A port"


#: The Ledger interface's methods (dtp.ledger.sui._tx.BUILDERS), in its order.
LEDGER_CALLS: Final = {
    "create_host": _entry("host::create(bytes noise_static_key, vec_bytes endpoint)"),
    "set_authority": _entry("host::set_authority(mut Host, address address)"),
    "set_noise_static_key": _entry("host::set_noise_static_key(mut Host, bytes key)"),
    "set_endpoints": _entry("host::set_endpoints(mut Host, vec_bytes endpoint)"),
    "set_firewall_mode": _entry("host::set_firewall_mode(mut Host, u8 The firewall mode)"),
    "allow": _entry("host::allow(mut Host, address client address)"),
    "disallow": _entry("host::disallow(mut Host, address client address)"),
    "deny": _entry("host::deny(mut Host, address client address)"),
    "undeny": _entry("host::undeny(mut Host, address client address)"),
    "set_client_limits": _entry(
        "host::set_client_limits(mut Host, u64 max_connections_per_client, u64 max_bytes_per_sec, "
        "u64 max_requests_per_sec)"
    ),
    # the SLA is host::new_sla's result, made first (dtp.ledger.sui._tx._Tx.sla)
    "add_service": _entry(
        f"host::add_service(mut Host, {_PORT}, utf8 kind, sla, u64 max_connections)"
    ),
    "update_service": _entry(f"host::update_service(mut Host, {_PORT}, sla, u64 max_connections)"),
    "remove_service": _entry(f"host::remove_service(mut Host, {_PORT})"),
    "create_spending_cap": _entry("spending_cap::create(u64 max_per_epoch)"),
    "set_max_per_epoch": _entry(
        "spending_cap::set_max_per_epoch(mut SpendingCap, u64 max_per_epoch)"
    ),
    # the Host read-only, so that opens of one host run concurrently on Sui
    "open_connection": _open(f"transport_control::open(imm Host, {_PORT}, mut SpendingCap)"),
    # docs/escrow.md §6.2
    "open_session_connection": _open(
        f"transport_control::open_with_session_key(imm Host, {_PORT}, mut SpendingCap)",
        key="session_public_key",
    ),
    "top_up": _entry("escrow::top_up(mut Escrow, mut SpendingCap, coin the top-up amount)"),
    # the receipt is a dtp.ledger.receipt.Receipt
    "claim": _entry("escrow::claim(mut Escrow, receipt)"),
    "close_connection": _entry("transport_control::close(mut TransportControl, clock)"),
    "finalize": _entry("transport_control::finalize(mut TransportControl, clock)"),
    "settle": _entry(
        "transport_control::settle(mut TransportControl, mut Escrow, mut SpendingCap, clock)"
    ),
    "settle_with_receipt": _entry(
        "transport_control::settle_with_receipt(mut TransportControl, mut Escrow, mut SpendingCap, "
        "receipt, clock)"
    ),
    "create_pipe": _entry("pipe::create(imm TransportControl, u64 inner_count)"),
    "pipe_send": _entry("pipe::send(owned Pipe, u64 inner, bytes data)"),
    "pipe_sync": _entry("pipe::sync(owned Pipe, u64 inner, u64 acked)"),
    "destroy_pipe": _entry("pipe::destroy(owned Pipe)"),
    "create_broadcast": _entry(
        "broadcast::create(utf8 channel, u64 slot_price, u64 slot_ms, clock)"
    ),
    "broadcast_contribute": _entry(
        "broadcast::contribute(mut Broadcast, coin the contribution, clock)"
    ),
    "broadcast_transmit": _entry("broadcast::transmit(mut Broadcast, bytes data, clock)"),
    "broadcast_claim": _entry("broadcast::claim(mut Broadcast, clock)"),
    "broadcast_cancel": _entry("broadcast::cancel(mut Broadcast, clock)"),
    "broadcast_withdraw": _entry("broadcast::withdraw(mut Broadcast)"),
    "broadcast_leave": _entry("broadcast::leave(mut Broadcast, clock)"),
    "broadcast_heartbeat": _entry("broadcast::heartbeat(mut Broadcast, clock)"),
}

#: The messaging entry points (mailbox, response escrow).
MESSAGING_CALLS: Final = {
    "mailbox_send": _entry("mailbox::send(imm Host, bytes payload)"),
    "response_escrow_deposit": _entry(
        "response_escrow::deposit(address server, bytes request_id, bytes requester_public_key, "
        "u64 deadline_ms, coin the response fee, clock)"
    ),
    "response_escrow_claim": _entry(
        "response_escrow::claim(mut ResponseEscrow, bytes response_hash, bytes signature)"
    ),
    "response_escrow_deliver": _entry(
        "response_escrow::deliver(mut ResponseEscrow, bytes response, clock)"
    ),
    "response_escrow_refund": _entry("response_escrow::refund(mut ResponseEscrow, clock)"),
}

#: The payment models' entry points (docs/escrow.md §13-16).
ECONOMICS_CALLS: Final = {
    "create_subscription_offer": _entry(
        f"subscription::create_offer(imm Host, {_PORT}, u64 price_per_epoch, u64 period_epochs)"
    ),
    "subscribe": _entry(
        "subscription::subscribe(imm SubscriptionOffer, imm Host, u64 epochs, coin the payment)"
    ),
    "renew_subscription": _entry(
        "subscription::renew(mut Subscription, imm SubscriptionOffer, imm Host, u64 epochs, "
        "coin the payment)"
    ),
    "claim_subscription": _entry("subscription::claim(mut Subscription, imm SubscriptionOffer)"),
    "withdraw_subscription_offer": _entry(
        "subscription::withdraw_offer(mut SubscriptionOffer, imm Host)"
    ),
    "refund_subscription": _entry("subscription::refund(mut Subscription, imm SubscriptionOffer)"),
    "open_subscribed_connection": _open(
        "subscription::open_connection(imm Subscription, imm SubscriptionOffer, imm Host, "
        "mut SpendingCap)"
    ),
    "end_subscribed_connection": _entry(
        "subscription::end_connection(imm Subscription, imm SubscriptionOffer, "
        "mut TransportControl, mut Escrow, mut SpendingCap, clock)"
    ),
    "create_sponsor_pool": _entry(
        f"sponsor::create(imm Host, {_PORT}, u64 share_bps, u64 max_pledge, u64 lanes)"
    ),
    # a sponsor pool is read (its terms), the lane written (its money and pledges)
    "fund_sponsor_pool": _entry("sponsor::fund(imm SponsorPool, mut SponsorLane, coin the amount)"),
    "withdraw_sponsor_pool": _entry(
        "sponsor::withdraw(imm SponsorPool, mut SponsorLane, u64 the amount)"
    ),
    "set_sponsor_max_pledge": _entry("sponsor::set_max_pledge(mut SponsorPool, u64 max_pledge)"),
    "open_sponsored_connection": _open(
        "sponsor::open_connection(imm SponsorPool, mut SponsorLane, imm Host, mut SpendingCap)"
    ),
    "reimburse": _entry(
        "sponsor::reimburse(imm SponsorPool, mut SponsorLane, imm TransportControl, imm Escrow)"
    ),
    "create_ticketed_broadcast": _entry(
        "broadcast::create_ticketed(imm TicketSale, utf8 channel, u64 slot_price, u64 slot_ms, "
        "clock)"
    ),
    # the builder takes the recipient first, as Ledger.pay does
    "pay": _entry("payment::pay(coin the amount, address recipient, bytes memo)", (1, 0, 2)),
    "create_ticket_sale": _entry(
        "tickets::create(utf8 title, u64 ticket_price, u64 min_tickets, u64 max_tickets, "
        "u64 deadline_ms, clock)"
    ),
    "buy_tickets": _entry("tickets::buy(mut TicketSale, u64 count, coin the payment, clock)"),
    "go_on_air": _entry("tickets::go_on_air(mut TicketSale, clock)"),
    "cancel_ticket_sale": _entry("tickets::cancel(mut TicketSale)"),
    "refund_tickets": _entry("tickets::refund(mut TicketSale, clock)"),
    "create_retention_terms": _entry(
        f"retention::create_terms(imm Host, {_PORT}, u64 retention_ms, u64 storage_price_per_byte)"
    ),
    "retire_retention_terms": _entry("retention::retire_terms(mut RetentionTerms, imm Host)"),
    "replace_retention_terms": _entry(
        "retention::replace_terms(mut RetentionTerms, imm Host, u64 retention_ms, "
        "u64 storage_price_per_byte)"
    ),
    "send_retained": _entry(
        "retention::send(owned Pipe, imm TransportControl, imm RetentionTerms, u64 inner, "
        "bytes data, coin the storage deposit, clock)"
    ),
    "confirm_consumed": _entry("retention::confirm(mut RetainedRecord)"),
    # by value: the shared record is deleted
    "delete_retained": _entry("retention::delete(mut RetainedRecord, clock)"),
}

#: The registry's entry points (dtp.ledger._coordination.Coordination; docs/escrow.md §21).
COORDINATION_CALLS: Final = {
    "create_registry": _entry("registry::create()"),
    "registry_admit": _entry("registry::admit(mut Registry, address member address)"),
    "registry_revoke": _entry("registry::revoke(mut Registry, address member address)"),
    "acquire_lease": _entry(
        "registry::acquire(mut Registry, utf8 lease name, bytes holder, u64 duration_ms, clock)"
    ),
    "renew_lease": _entry(
        "registry::renew(mut Registry, utf8 lease name, u64 token, u64 duration_ms, clock)"
    ),
    "release_lease": _entry("registry::release(mut Registry, utf8 lease name, u64 token)"),
    "registry_put": _entry(
        "registry::put(mut Registry, utf8 lease name, u64 token, utf8 key, bytes value, clock)"
    ),
    "registry_remove": _entry(
        "registry::remove(mut Registry, utf8 lease name, u64 token, utf8 key, clock)"
    ),
}

#: Every builder's Move call, by builder name: the groups above, the deletions (their
#: builders are dtp.ledger.sui._tx_deletion's: the objects taken by value, "mut") and each
#: versioned object's migration by the AdminCap's holder (dtp.ledger.sui._tx_versions).
MOVE_CALLS: Final[dict[str, Entry]] = {
    **LEDGER_CALLS,
    **MESSAGING_CALLS,
    **ECONOMICS_CALLS,
    **COORDINATION_CALLS,
    "destroy_connection": _entry("transport_control::destroy(mut TransportControl, mut Escrow)"),
    # a sponsored connection's deletion: the pool read, the lane written, the objects moved
    "reimburse_and_destroy": _entry(
        "sponsor::reimburse_and_destroy(imm SponsorPool, mut SponsorLane, mut TransportControl, "
        "mut Escrow)"
    ),
    "destroy_response_escrow": _entry("response_escrow::destroy(mut ResponseEscrow)"),
    "leave_ticket_sale": _entry("tickets::leave(mut TicketSale)"),
    "destroy_ticket_sale": _entry("tickets::destroy(mut TicketSale, clock)"),
    **{
        MIGRATE_BUILDERS[struct]: _entry(f"{module}::{function}(owned {ADMIN_CAP}, mut {struct})")
        for struct, (module, function) in MIGRATE.items()
    },
}
