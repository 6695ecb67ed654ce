"""The payment models beyond per-byte escrow (docs/escrow.md §13-16): typed objects and the
ledger methods behind them.

- **Subscriptions** (``dtp::subscription``): access to one service bought by the epoch;
  a live subscription opens connections with an all-zero SLA.
- **Sponsoring** (``dtp::sponsor``): the provider pays ``share_bps`` of its clients'
  fees from a funded pool, whose money is held in lanes a client opens through (so
  sponsored opens of different clients write no object in common); the split is public
  before opening.
- **Tickets** (``dtp::tickets``): an event goes on air only once ``min_tickets`` sold;
  otherwise every buyer is refunded.
- **Retention** (``dtp::retention``): data sent through the ledger carrier is kept with
  a storage deposit per byte, returned when the sender deletes it after the retention
  time and the receiver's confirmation -- or, unconfirmed, once twice the retention time
  has passed: no deposit is held beyond ``2 * MAX_RETENTION_MS``.

:class:`PaymentModels` is mixed into :class:`~dtp.ledger.interface.Ledger`; its calls are made
through the ledger's ``_move`` and its reads through ``_model`` (NotImplementedError for a
ledger without them; both built-in ledgers have them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast, get_args

from dtp.errors import InvalidArgument, move_error
from dtp.ledger._move_call import Id, MoveCall, MoveCaller, signer_key, u64
from dtp.ledger._objects import (
    U64_MAX,
    OpenedConnection,
    Pipe,
    TransportControl,
    as_bytes,
    check_port,
    check_signer,
    from_move_fields,
    is_whole,
    normalize_id,
)
from dtp.ledger._versions import MIGRATE

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "BPS",
    "DEFAULT_SPONSOR_LANES",
    "MAX_PAYMENT_MEMO",
    "MAX_RETENTION_MS",
    "MAX_SPONSOR_LANES",
    "PaymentModels",
    "RetainedRecord",
    "RetentionTerms",
    "SponsorLane",
    "SponsorPledge",
    "SponsorPool",
    "Subscription",
    "SubscriptionOffer",
    "TicketSale",
    "bps_share",
    "economics_object_from_fields",
    "gather_from_lanes",
    "lane_order",
    "sponsor_pledge",
    "sponsor_split",
    "spread_over_lanes",
]

#: 100% in basis points (``SponsorPool.share_bps``).
BPS: Final = 10_000

#: The most lanes a sponsor pool has (``sponsor::MAX_LANES``).
MAX_SPONSOR_LANES: Final = 64

#: The lanes of a pool whose creator names no number: sponsored opens of clients on
#: different lanes write no object in common (docs/escrow.md §19).
DEFAULT_SPONSOR_LANES: Final = 8

#: Longest memo of a ``payment::pay`` (bytes).
MAX_PAYMENT_MEMO: Final = 256

#: The longest retention terms may ask (``retention::MAX_RETENTION_MS``, 30 days): an
#: unconfirmed record's deposit comes back after twice its retention time at most.
MAX_RETENTION_MS: Final = 2_592_000_000


def _whole(value: int, what: str, top: int) -> int:
    # bool is an int, and a float or a negative number would give a split or a deposit
    # that no Move call can produce: refuse them as the u64 arguments they stand for
    if not is_whole(value, 0, top):
        raise InvalidArgument(f"{what} must be an integer from 0 to {top}, got {value!r}.")
    return value


def bps_share(amount: int, share_bps: int) -> int:
    """``share_bps`` basis points of ``amount``, rounded down: the provider's part of a
    fee, and of a deposit or a claim the part its sponsor pledges or pays back (the
    ``amount * share_bps / 10000`` of ``dtp::sponsor``)."""
    return amount * share_bps // BPS


def sponsor_pledge(deposit: int, share_bps: int, max_pledge: int) -> int:
    """``sponsor::pledge_for``: what a lane pledges to a connection opened with
    ``deposit``, its share capped at the pool's ``max_pledge``."""
    return min(bps_share(deposit, share_bps), max_pledge)


def sponsor_split(fee: int, share_bps: int) -> tuple[int, int]:
    """``sponsor::quote``: (what the client bears, what the provider pays) of ``fee``.
    Raises InvalidArgument unless ``fee`` is a u64 and ``0 <= share_bps <= BPS``."""
    _whole(fee, "the fee", U64_MAX)
    _whole(share_bps, "share_bps", BPS)
    provider = bps_share(fee, share_bps)
    return fee - provider, provider


@dataclass(frozen=True)
class SubscriptionOffer:
    """``dtp::subscription::SubscriptionOffer`` (shared)."""

    id: str
    version: int
    host: str
    port: int
    #: Receives the earnings (the host's authority when the offer was made).
    provider: str
    price_per_epoch: int
    #: Subscriptions and renewals are sold in multiples of this many epochs.
    period_epochs: int
    withdrawn: bool
    #: The epoch of the withdrawal (meaningful once withdrawn).
    withdrawn_epoch: int
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    def sold(self, authority: str) -> bool:
        """Whether the offer, not withdrawn, was sold with its host: ``authority`` (the
        host's now) is not its provider. It earns nothing from then on, and anyone may
        withdraw it (``subscription::withdraw_offer``, docs/escrow.md §13)."""
        return not self.withdrawn and normalize_id(authority, "address") != normalize_id(
            self.provider, "address"
        )


@dataclass(frozen=True)
class Subscription:
    """``dtp::subscription::Subscription`` (shared; only :attr:`holder` may use it)."""

    id: str
    version: int
    offer: str
    holder: str
    price_per_epoch: int
    #: First epoch paid for.
    start_epoch: int
    #: First epoch not paid for.
    expires_epoch: int
    #: Epochs from :attr:`start_epoch` already paid to the provider.
    claimed_epochs: int
    #: MIST paid and neither earned by the provider nor refunded.
    funds: int
    refunded: bool
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    def is_live(self, epoch: int) -> bool:
        """Whether the subscription grants access in ``epoch``."""
        return self.start_epoch <= epoch < self.expires_epoch

    def over(
        self, offer: SubscriptionOffer, epoch: int, authority: str | None = None
    ) -> str | None:
        """``subscription::is_over`` worded: None while the subscription covers its
        connections in ``epoch``, else why not (its offer withdrawn, or the epochs it
        covers). ``authority``, the offer's host's authority now: an offer whose provider
        it no longer is earns nothing (docs/escrow.md §13), so its subscriptions cover
        nothing for the runtime either, though the chain holds them over only once the
        offer is withdrawn (:meth:`SubscriptionOffer.sold`)."""
        if offer.withdrawn:
            return (
                f"subscription {self.id}: its offer {offer.id} was withdrawn in epoch "
                f"{offer.withdrawn_epoch}"
            )
        if not self.is_live(epoch):
            return (
                f"subscription {self.id} covers epochs {self.start_epoch}.."
                f"{self.expires_epoch - 1}; it is epoch {epoch}"
            )
        if authority is not None and offer.sold(authority):
            return (
                f"subscription {self.id}: its offer {offer.id} is {offer.provider}'s, and "
                f"host {offer.host} is {authority}'s now (an offer earns only while its "
                "provider is the host's authority)"
            )
        return None


def lane_order(lanes: Sequence[str], cap_id: str | None) -> list[str]:
    """A pool's lanes in the order a client tries them: from the lane its spending cap
    falls on (the cap ID modulo the number of lanes) round. A client's opens are ordered
    by its cap already (docs/escrow.md §19), so its home lane adds no ordering of its
    own; different caps fall on different lanes. ``cap_id`` None: from the first."""
    if not lanes:
        return []
    start = 0 if cap_id is None else int(normalize_id(cap_id)[2:], 16) % len(lanes)
    return [lanes[(start + i) % len(lanes)] for i in range(len(lanes))]


def _level(amount: int, levels: Sequence[int], up: bool) -> list[int]:
    """The parts of ``amount`` that bring ``levels`` towards one level: raising the
    lowest first (``up``) or lowering the highest first; ties go to the first lanes."""
    sign = 1 if up else -1
    keys = [sign * v for v in levels]

    def moved(target: int) -> int:
        return sum(max(0, target - k) for k in keys)

    # the highest target whose whole moves fit in amount (moved() grows with it)
    low, high = min(keys), min(keys) + amount
    while low < high:
        mid = (low + high + 1) // 2
        if moved(mid) <= amount:
            low = mid
        else:
            high = mid - 1
    parts = [max(0, low - k) for k in keys]
    rest = amount - sum(parts)
    for i, k in enumerate(keys):
        if rest == 0:
            break
        if k <= low:
            parts[i] += 1
            rest -= 1
    return parts


def spread_over_lanes(amount: int, available: Sequence[int]) -> list[int]:
    """How a pool-wide funding of ``amount`` MIST is split over lanes that hold
    ``available`` unpledged: the least funded lanes first, towards one level, so that
    every lane can pledge alike."""
    return _level(amount, available, up=True)


def gather_from_lanes(amount: int, available: Sequence[int]) -> list[int]:
    """How a pool-wide withdrawal of ``amount`` MIST (at most the sum of ``available``)
    is taken from the lanes: the best funded first, towards one level."""
    if amount > sum(available):
        raise InvalidArgument(f"{amount} MIST is more than the lanes' {sum(available)} unpledged.")
    return _level(amount, available, up=False)


@dataclass(frozen=True)
class SponsorPool:
    """``dtp::sponsor::SponsorPool`` (shared): a service's sponsoring terms. Its money is
    in its :class:`SponsorLane` objects (:meth:`PaymentModels.get_sponsor_lanes`)."""

    id: str
    version: int
    host: str
    port: int
    #: The host's authority that made the pool: its money, and the one whose
    #: connections it sponsors (none after an authority change; docs/escrow.md §14).
    provider: str
    #: The provider's share of each sponsored connection's fees, in basis points.
    share_bps: int
    #: The most a lane pledges to one connection (0: it sponsors nothing new).
    max_pledge: int
    #: Its lanes' IDs, fixed when it was made.
    lanes: tuple[str, ...]
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    def pledge_for(self, deposit: int) -> int:
        """The pledge a connection opened now with ``deposit`` would get:
        ``min(deposit × share_bps / 10000, max_pledge)``, rounded down (``sponsor::
        pledge_for``). Raises InvalidArgument for a deposit that is not a u64."""
        whole = _whole(deposit, "the deposit", U64_MAX)
        return sponsor_pledge(whole, self.share_bps, self.max_pledge)

    def quote(self, fee: int) -> tuple[int, int]:
        """The split of ``fee`` shown before opening: (client pays, provider pays).
        Raises InvalidArgument for a fee that is not a u64."""
        return sponsor_split(fee, self.share_bps)


@dataclass(frozen=True)
class SponsorLane:
    """``dtp::sponsor::SponsorLane`` (shared): part of a pool's money and the pledges
    made from it. In every lane ``reserved`` is the sum of its pledges, at most
    ``funds``."""

    id: str
    version: int
    pool: str
    #: MIST in the lane, pledged or not.
    funds: int
    #: Part of :attr:`funds` pledged to open sponsored connections.
    reserved: int
    #: Pledges it holds (connections opened through it, not yet reimbursed).
    pledges: int
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    @property
    def available(self) -> int:
        """MIST the lane can still pledge or the provider withdraw."""
        return self.funds - self.reserved


@dataclass(frozen=True)
class SponsorPledge:
    """What a lane pledged to one connection, until its reimbursement removes it."""

    lane: str
    amount: int


@dataclass(frozen=True)
class TicketSale:
    """``dtp::tickets::TicketSale`` (shared)."""

    id: str
    version: int
    organizer: str
    title: str
    ticket_price: int
    #: Tickets that must sell before the event may go on air.
    min_tickets: int
    #: 0 means unlimited.
    max_tickets: int
    #: Going on air must happen by this ledger time (ms).
    deadline_ms: int
    #: Sold and not refunded.
    sold: int
    #: Tickets per buyer. Left out of the hash (a dict has none), so a sale, frozen like
    #: the other ledger objects, is hashable like them.
    holders: Mapping[str, int] = field(hash=False)
    #: MIST held (``sold * ticket_price`` before going on air, then 0).
    funds: int
    on_air: bool
    cancelled: bool
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1


@dataclass(frozen=True)
class RetentionTerms:
    """``dtp::retention::RetentionTerms`` (shared): a service's retention rule."""

    id: str
    version: int
    host: str
    port: int
    retention_ms: int
    storage_price_per_byte: int
    #: Taken back by the provider (``retention::retire_terms``): sends refuse them.
    retired: bool = False
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    def deposit_for(self, size: int) -> int:
        """The storage deposit of a record of ``size`` bytes (InvalidArgument for a size
        that is not a non-negative integer)."""
        return _whole(size, "the record size", U64_MAX) * self.storage_price_per_byte


@dataclass(frozen=True)
class RetainedRecord:
    """``dtp::retention::RetainedRecord`` (shared until deleted)."""

    id: str
    version: int
    connection: str
    pipe: str
    inner: int
    seq: int
    sender: str
    receiver: str
    data: bytes
    stored_at_ms: int
    retention_ms: int
    #: The sender's storage deposit, MIST.
    deposit: int
    consumed: bool
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    @property
    def delete_after_ms(self) -> int:
        """Earliest ledger time at which the sender may delete the record, once the
        receiver confirmed it."""
        return self.stored_at_ms + self.retention_ms

    @property
    def reclaim_after_ms(self) -> int:
        """Earliest ledger time at which the sender may delete the record unconfirmed
        (twice the retention time: the deposit's bounded way back)."""
        return self.stored_at_ms + 2 * self.retention_ms

    def deletable_at(self, now_ms: int) -> bool:
        """Whether ``retention::delete`` by the sender succeeds at ledger time ``now_ms``."""
        due = self.delete_after_ms if self.consumed else self.reclaim_after_ms
        return now_ms >= due


EconomicsObject = (
    SubscriptionOffer
    | Subscription
    | SponsorPool
    | SponsorLane
    | TicketSale
    | RetentionTerms
    | RetainedRecord
)
_M = TypeVar("_M", bound=EconomicsObject)

#: The payment-model objects' classes, by struct name.
_ECONOMICS_OBJECTS: Final[dict[str, type[EconomicsObject]]] = {
    cls.__name__: cls for cls in get_args(EconomicsObject)
}
#: Struct name -> Move module, for the objects of this module.
ECONOMICS_MODULES: Final = {name: MIGRATE[name][0] for name in _ECONOMICS_OBJECTS}

#: The payment model of each module (for "this ledger has no ...").
_AREAS: Final = {
    "subscription": "subscriptions",
    "sponsor": "sponsor pools",
    "tickets": "ticket sales",
    "retention": "retention",
}


def economics_object_from_fields(
    name: str, object_id: str, version: int, d: Mapping[str, Any]
) -> EconomicsObject:
    """The typed view of a payment-model object from its Move fields (balances as ints,
    a TicketSale's ``holders`` table as a dict). Raises ValueError for other names."""
    cls = _ECONOMICS_OBJECTS.get(name)
    if cls is None:
        raise ValueError(f"{name} is not a payment-model object")
    given: dict[str, Any] = {}
    if cls is SponsorPool:
        if not isinstance(d["lanes"], list):
            raise TypeError(f"SponsorPool.lanes is {d['lanes']!r:.40}, not a vector of IDs")
        given["lanes"] = tuple(d["lanes"])
    elif cls is SponsorLane:
        # LocalLedger keeps the entries, a node the Table's size
        pledges = d["pledges"]
        given["pledges"] = len(pledges) if isinstance(pledges, dict) else pledges
    elif cls is TicketSale:
        given["holders"] = dict(d.get("holders", {}))
    elif cls is RetentionTerms:
        # (terms stored before they could be retired have no flag: live)
        given["retired"] = d.get("retired", False)
    return from_move_fields(cls, object_id, version, d, **given)


class _Reads(Protocol):
    """The reads of :class:`~dtp.ledger.interface.Ledger` the sponsoring methods use."""

    def balance(self, address: str) -> int: ...

    def get_connection(self, connection_id: str) -> TransportControl: ...

    def get_pipe(self, pipe_id: str) -> Pipe: ...


# the argument names the calls below name more than once
_PER_BYTE: Final = "storage_price_per_byte"
_DEPOSIT: Final = "the storage deposit"
# where SuiLedger reads each call's result (MoveCall.result)
_OPENED: Final = "ConnectionOpened"
_CLAIMED: Final = "SubscriptionClaimed.amount"
_REFUNDED: Final = "SubscriptionRefunded.amount"
_POOL_CREATED: Final = "SponsorPoolCreated.pool"
_REIMBURSED: Final = "SponsorReimbursed.amount"
_BROADCAST_CREATED: Final = "BroadcastCreated.broadcast"
_SALE_CREATED: Final = "TicketSaleCreated.sale"
_ON_AIR: Final = "TicketedEventOnAir.revenue"
_TICKETS_REFUNDED: Final = "TicketsRefunded.amount"
_TERMS_CREATED: Final = "RetentionTermsCreated.terms"
_DELETED: Final = "RecordDeleted.refunded"


def _pool_lane(pool_id: str, lane_id: str) -> tuple[Id, Id]:
    return Id(pool_id), Id(lane_id)


def _subscription_ids(sub: Subscription) -> tuple[Id, Id]:
    return Id(sub.id), Id(sub.offer)


def _missing(ledger: object, what: str) -> NotImplementedError:
    return NotImplementedError(f"{type(ledger).__name__} has no {what}")


class PaymentModels(MoveCaller):
    """Ledger methods of the payment models; one per entry function of
    ``dtp::subscription``, ``dtp::sponsor``, ``dtp::tickets`` and ``dtp::retention``."""

    def _model(self, object_id: str, struct: str) -> EconomicsObject:
        """Read the payment-model object ``object_id`` of Move type ``struct`` (each
        ledger reads its own way); the typed getters below are built on it."""
        raise _missing(self, _AREAS[ECONOMICS_MODULES[struct]])

    def _typed_model(self, object_id: str, struct: str, cls: type[_M]) -> _M:
        obj = self._model(object_id, struct)
        assert isinstance(obj, cls)
        return obj

    # -- subscriptions ------------------------------------------------------------------------

    def create_subscription_offer(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        price_per_epoch: int,
        period_epochs: int = 1,
    ) -> str:
        """``subscription::create_offer`` (host authority). Returns the offer ID."""
        check_signer(signer)
        args = (check_port(port), u64(price_per_epoch, "price_per_epoch"))
        call = MoveCall(
            "subscription",
            "create_offer",
            (Id(host_id), *args, u64(period_epochs, "period_epochs")),
            result="SubscriptionOfferCreated.offer",
        )
        return str(self._move(signer, call))

    def subscribe(
        self, signer: HostIdentity, offer_id: str, epochs: int, host_id: str | None = None
    ) -> str:
        """``subscription::subscribe``: pay ``epochs * price_per_epoch`` MIST for epochs
        ``[now, now + epochs)``, while the offer's provider is its host's authority
        (``EProviderChanged`` after the host changed hands). ``host_id`` defaults to the
        offer's host. Returns the subscription ID."""
        check_signer(signer)
        u64(epochs, "epochs")
        offer = self.get_subscription_offer(offer_id)
        payment = u64(epochs * offer.price_per_epoch, "the payment")
        host = Id(offer.host if host_id is None else host_id)
        args = (Id(offer_id), host, epochs, payment)
        call = MoveCall("subscription", "subscribe", args, payment, "Subscribed.subscription")
        return str(self._move(signer, call))

    def renew_subscription(
        self, signer: HostIdentity, subscription_id: str, epochs: int, host_id: str | None = None
    ) -> int:
        """``subscription::renew`` (holder; ``EProviderChanged`` after the host changed
        hands). ``host_id`` defaults to the offer's host. Returns the new
        ``expires_epoch``."""
        check_signer(signer)
        u64(epochs, "epochs")
        sub = self.get_subscription(subscription_id)
        if host_id is None:
            host_id = self.get_subscription_offer(sub.offer).host
        payment = u64(epochs * sub.price_per_epoch, "the payment")
        args = (*_subscription_ids(sub), Id(host_id), epochs, payment)
        call = MoveCall("subscription", "renew", args, payment, "SubscriptionRenewed.expires_epoch")
        return int(self._move(signer, call))

    def claim_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        """``subscription::claim`` (provider): the MIST of the begun, unpaid epochs."""
        check_signer(signer)
        ids = _subscription_ids(self.get_subscription(subscription_id))
        return int(self._move(signer, MoveCall("subscription", "claim", ids, 0, _CLAIMED)))

    def withdraw_subscription_offer(
        self, signer: HostIdentity, offer_id: str, host_id: str | None = None
    ) -> None:
        """``subscription::withdraw_offer``: by the provider; by anyone once the host's
        authority is no longer the provider (the new authority after a sale, a holder:
        the provider then earns no epoch begun after this one, docs/escrow.md §13).
        ``host_id`` defaults to the offer's host."""
        check_signer(signer)
        if host_id is None:
            host_id = self.get_subscription_offer(offer_id).host
        ids = (Id(offer_id), Id(host_id))
        self._move(signer, MoveCall("subscription", "withdraw_offer", ids))

    def refund_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        """``subscription::refund`` (holder, after withdrawal): the unused whole epochs."""
        check_signer(signer)
        ids = _subscription_ids(self.get_subscription(subscription_id))
        return int(self._move(signer, MoveCall("subscription", "refund", ids, 0, _REFUNDED)))

    def open_subscribed_connection(
        self,
        signer: HostIdentity,
        subscription_id: str,
        cap_id: str,
        deposit: int = 0,
        client_public_key: bytes | None = None,
        host_id: str | None = None,
    ) -> OpenedConnection:
        """``subscription::open_connection``: an unmetered connection (all-zero SLA) to the
        offer's service, while the offer's provider is its host's authority
        (``EProviderChanged``). ``host_id`` defaults to the offer's host."""
        check_signer(signer)
        u64(deposit, "the deposit")
        key = signer_key(signer, client_public_key, "client_public_key")
        sub = self.get_subscription(subscription_id)
        if host_id is None:
            host_id = self.get_subscription_offer(sub.offer).host
        ids = (*_subscription_ids(sub), Id(host_id), Id(cap_id))
        call = MoveCall("subscription", "open_connection", (*ids, key, deposit), deposit, _OPENED)
        return cast(OpenedConnection, self._move(signer, call))

    def end_subscribed_connection(
        self,
        signer: HostIdentity,
        connection_id: str,
        subscription_id: str | None = None,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> int:
        """``subscription::end_connection`` (anyone): end a connection opened with a
        subscription that is over (expired, or its offer withdrawn), closed and settled at
        once: nothing is owed, and its deposit (normally 0) goes back to the client, which
        this returns. ``subscription_id``, ``escrow_id`` and ``cap_id`` default to the
        connection's (the subscription's offer is looked up); a metered connection has
        no subscription, and without one given is refused here as the ledger would
        (``ENotSubscribed``). ``ESubscriptionLive`` while the subscription still covers
        the connection."""
        check_signer(signer)
        tc = cast(_Reads, self).get_connection(connection_id)
        subscription_id = subscription_id or tc.subscription
        if subscription_id is None:
            # (Move would need a subscription to be given: refused here, before any call)
            raise move_error(
                "subscription",
                "ENotSubscribed",
                f"connection {tc.id} was not opened with a subscription",
            )
        ids = _subscription_ids(self.get_subscription(subscription_id))
        objects = (
            Id(tc.id),
            Id(escrow_id or tc.escrow),
            Id(cap_id or tc.spending_cap),
        )
        result = "SubscribedConnectionEnded.refunded"
        call = MoveCall("subscription", "end_connection", (*ids, *objects), 0, result)
        return int(self._move(signer, call))

    def get_subscription_offer(self, offer_id: str) -> SubscriptionOffer:
        """The SubscriptionOffer ``offer_id``."""
        return self._typed_model(offer_id, "SubscriptionOffer", SubscriptionOffer)

    def get_subscription(self, subscription_id: str) -> Subscription:
        """The Subscription ``subscription_id``."""
        return self._typed_model(subscription_id, "Subscription", Subscription)

    # -- sponsoring ----------------------------------------------------------------------------
    #
    # A pool's money is in its lanes: the methods below take a pool and pick its lanes (or
    # take the one given as ``lane``); the Move calls are one per lane.

    def create_sponsor_pool(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        share_bps: int,
        *,
        max_pledge: int,
        lanes: int = DEFAULT_SPONSOR_LANES,
    ) -> str:
        """``sponsor::create`` (host authority): a pool paying back ``share_bps`` of the
        fees of the service on ``port``, pledging at most ``max_pledge`` MIST to any one
        connection, so that no client locks the pool with one large deposit, with its
        money in ``lanes`` lanes (1 to 64) that clients open through, so that their
        sponsored opens are not ordered with each other (docs/escrow.md §14, §19).
        Returns the pool ID."""
        check_signer(signer)
        terms = (check_port(port), u64(share_bps, "share_bps"), u64(max_pledge, "max_pledge"))
        args = (Id(host_id), *terms, u64(lanes, "lanes"))
        return str(self._move(signer, MoveCall("sponsor", "create", args, 0, _POOL_CREATED)))

    def set_sponsor_max_pledge(self, signer: HostIdentity, pool_id: str, max_pledge: int) -> None:
        """``sponsor::set_max_pledge`` (provider): the most a lane pledges to one
        connection opened from now on (0 pauses the sponsoring)."""
        check_signer(signer)
        args = (Id(pool_id), u64(max_pledge, "max_pledge"))
        self._move(signer, MoveCall("sponsor", "set_max_pledge", args))

    def fund_sponsor_pool(
        self, signer: HostIdentity, pool_id: str, amount: int, *, lane: str | None = None
    ) -> None:
        """``sponsor::fund``: ``amount`` MIST from the signer into the pool's ``lane``, or,
        by default, spread over its lanes, the least funded first (one transaction for
        each lane it reaches: if one fails, the ones before it stay funded, as the
        error's note says). A signer without ``amount`` MIST is refused before any."""
        check_signer(signer)
        _whole(amount, "the amount", U64_MAX)
        if lane is not None:
            self._sponsor_fund(signer, pool_id, lane, amount)
            return
        lanes = self.get_sponsor_lanes(pool_id)
        parts = spread_over_lanes(amount, [one.available for one in lanes])
        plan = [(one.id, part) for one, part in zip(lanes, parts, strict=True) if part]
        if len(plan) > 1 and amount > cast(_Reads, self).balance(signer.sui_address):
            plan = [(plan[0][0], amount)]  # refused by the ledger as it refuses any fund
        self._per_lane(
            "funded",
            plan or [(lanes[0].id, amount)],
            lambda one, part: self._sponsor_fund(signer, pool_id, one, part),
        )

    def withdraw_sponsor_pool(
        self, signer: HostIdentity, pool_id: str, amount: int, *, lane: str | None = None
    ) -> None:
        """``sponsor::withdraw`` (provider): unpledged MIST back to the provider, from
        ``lane``, or, by default, from the best funded lanes first (one transaction for
        each: if one fails, the ones before it stay withdrawn, as the error's note says).
        More than the lanes hold unpledged is refused before any."""
        check_signer(signer)
        _whole(amount, "the amount", U64_MAX)
        if lane is not None:
            self._sponsor_withdraw(signer, pool_id, lane, amount)
            return
        lanes = self.get_sponsor_lanes(pool_id)
        available = [one.available for one in lanes]
        if amount == 0 or amount > sum(available):
            # refused by the ledger, as the best funded lane refuses it
            plan = [(lanes[available.index(max(available))].id, amount)]
        else:
            parts = gather_from_lanes(amount, available)
            plan = [(one.id, part) for one, part in zip(lanes, parts, strict=True) if part]
        self._per_lane(
            "withdrawn from",
            plan,
            lambda one, part: self._sponsor_withdraw(signer, pool_id, one, part),
        )

    @staticmethod
    def _per_lane(done: str, plan: list[tuple[str, int]], call: Callable[[str, int], None]) -> None:
        """Run ``call`` for each (lane, MIST) of ``plan`` in order; a failure after the
        first notes what was done before it (those transactions stand)."""
        for index, (lane, part) in enumerate(plan):
            try:
                call(lane, part)
            except Exception as exc:
                if index:
                    moved = ", ".join(f"{p} MIST {done} lane {n}" for n, p in plan[:index])
                    exc.add_note(f"Done before this failed, and kept: {moved}.")
                raise

    def open_sponsored_connection(
        self,
        signer: HostIdentity,
        pool_id: str,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
        host_id: str | None = None,
        *,
        lane: str | None = None,
    ) -> OpenedConnection:
        """``sponsor::open_connection``: open with one of the pool's lanes pledging its
        share: ``lane``, or, by default, the first in :func:`lane_order` of ``cap_id``
        that holds the pledge unpledged (none: its home lane, which refuses with
        ``ESponsorUnfunded``). ``host_id`` defaults to the pool's host."""
        # (the arguments checked before anything is read)
        check_signer(signer)
        _whole(deposit, "the deposit", U64_MAX)
        if client_public_key is not None:
            as_bytes(client_public_key, "client_public_key")
        pool = self.get_sponsor_pool(pool_id)
        if lane is None:
            order = lane_order(pool.lanes, cap_id)
            pledge = pool.pledge_for(deposit)
            lane = next(
                (one for one in order if self.get_sponsor_lane(one).available >= pledge),
                order[0],
            )
        return self._sponsor_open(
            signer,
            pool_id,
            lane,
            pool.host if host_id is None else host_id,
            cap_id,
            deposit,
            client_public_key,
        )

    def reimburse(
        self,
        signer: HostIdentity,
        pool_id: str,
        connection_id: str,
        escrow_id: str | None = None,
        *,
        lane: str | None = None,
    ) -> int:
        """``sponsor::reimburse`` (anyone, after settlement) through ``lane``, by default
        the lane holding the connection's pledge (none holds it: the first lane tried,
        which refuses with ``ENotSponsored``). Removes the pledge; returns the MIST paid
        to the connection's client."""
        check_signer(signer)
        tc = cast(_Reads, self).get_connection(connection_id)
        if lane is None:
            pool = self.get_sponsor_pool(pool_id)
            found = self._find_pledge(pool, tc.id, tc.spending_cap)
            lane = found.lane if found is not None else lane_order(pool.lanes, tc.spending_cap)[0]
        return self._sponsor_reimburse(
            signer, pool_id, lane, tc.id, tc.escrow if escrow_id is None else escrow_id
        )

    def get_sponsor_pool(self, pool_id: str) -> SponsorPool:
        """The SponsorPool ``pool_id``."""
        return self._typed_model(pool_id, "SponsorPool", SponsorPool)

    def get_sponsor_lane(self, lane_id: str) -> SponsorLane:
        """The SponsorLane ``lane_id``."""
        return self._typed_model(lane_id, "SponsorLane", SponsorLane)

    def get_sponsor_lanes(self, pool_id: str) -> tuple[SponsorLane, ...]:
        """The lanes of the pool ``pool_id``, in its order: its money is the sum of their
        ``funds``, pledged the sum of their ``reserved``."""
        return tuple(self.get_sponsor_lane(one) for one in self.get_sponsor_pool(pool_id).lanes)

    def get_sponsor_pledge(self, pool_id: str, connection_id: str) -> SponsorPledge | None:
        """What the pool pledged to ``connection_id``, and from which lane; None if no
        lane holds a pledge for it (never sponsored by the pool, or reimbursed)."""
        return self._find_pledge(self.get_sponsor_pool(pool_id), connection_id, None)

    def _find_pledge(
        self, pool: SponsorPool, connection_id: str, cap_id: str | None
    ) -> SponsorPledge | None:
        """The pledge for ``connection_id`` in ``pool``'s lanes, looked for from the home
        lane of ``cap_id`` (the one its open tried first)."""
        connection_id = normalize_id(connection_id, "connection ID")
        for one in lane_order(pool.lanes, cap_id):
            amount = self._sponsor_pledge(one, connection_id)
            if amount is not None:
                return SponsorPledge(one, amount)
        return None

    # one Move call per lane, and the one read each ledger makes its own way

    def _sponsor_fund(self, signer: HostIdentity, pool_id: str, lane_id: str, amount: int) -> None:
        """``sponsor::fund(&pool, &mut lane, coin)``."""
        check_signer(signer)
        args = (*_pool_lane(pool_id, lane_id), u64(amount, "the amount"))
        self._move(signer, MoveCall("sponsor", "fund", args, amount))

    def _sponsor_withdraw(
        self, signer: HostIdentity, pool_id: str, lane_id: str, amount: int
    ) -> None:
        """``sponsor::withdraw(&pool, &mut lane, amount)``."""
        check_signer(signer)
        args = (*_pool_lane(pool_id, lane_id), u64(amount, "the amount"))
        self._move(signer, MoveCall("sponsor", "withdraw", args))

    def _sponsor_open(
        self,
        signer: HostIdentity,
        pool_id: str,
        lane_id: str,
        host_id: str,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None,
    ) -> OpenedConnection:
        """``sponsor::open_connection(&pool, &mut lane, &host, &mut cap, key, coin,
        &clock)``."""
        check_signer(signer)
        u64(deposit, "the deposit")
        key = signer_key(signer, client_public_key, "client_public_key")
        ids = (*_pool_lane(pool_id, lane_id), Id(host_id), Id(cap_id))
        call = MoveCall("sponsor", "open_connection", (*ids, key, deposit), deposit, _OPENED)
        return cast(OpenedConnection, self._move(signer, call))

    def _sponsor_reimburse(
        self, signer: HostIdentity, pool_id: str, lane_id: str, connection_id: str, escrow_id: str
    ) -> int:
        """``sponsor::reimburse(&pool, &mut lane, &tc, &escrow)``."""
        check_signer(signer)
        objects = (Id(connection_id), Id(escrow_id))
        args = (*_pool_lane(pool_id, lane_id), *objects)
        return int(self._move(signer, MoveCall("sponsor", "reimburse", args, 0, _REIMBURSED)))

    def _sponsor_pledge(self, lane_id: str, connection_id: str) -> int | None:
        """The lane's pledge to ``connection_id`` (None: it holds none)."""
        raise _missing(self, "sponsor pools")

    # -- tickets -------------------------------------------------------------------------------

    def create_ticketed_broadcast(
        self,
        signer: HostIdentity,
        sale_id: str,
        channel: str | bytes,
        slot_price: int,
        slot_ms: int,
    ) -> str:
        """``broadcast::create_ticketed``: a broadcast (as ``create_broadcast``) for the
        holders of ``sale_id``'s tickets, by the sale's organizer (``ENotOrganizer``).
        Returns the broadcast ID."""
        check_signer(signer)
        raw = as_bytes(channel, "channel")
        args = (
            Id(sale_id),
            raw,
            u64(slot_price, "slot_price"),
            u64(slot_ms, "slot_ms"),
        )
        call = MoveCall("broadcast", "create_ticketed", args, 0, _BROADCAST_CREATED, "Broadcast")
        return str(self._move(signer, call))

    def create_ticket_sale(
        self,
        signer: HostIdentity,
        title: str | bytes,
        ticket_price: int,
        min_tickets: int,
        max_tickets: int,
        deadline_ms: int,
    ) -> str:
        """``tickets::create``. Returns the sale ID. ``title`` is text, or bytes taken as
        given: the Move call gets a ``vector<u8>`` and checks the terms before
        ``string::utf8``, which aborts on bytes that are not UTF-8 (``std::string``'s
        ``EInvalidUTF8``, a :class:`~dtp.errors.ChainError` named ``"MoveAbort"``)."""
        check_signer(signer)
        args = (
            as_bytes(title, "title"),
            u64(ticket_price, "ticket_price"),
            u64(min_tickets, "min_tickets"),
            u64(max_tickets, "max_tickets"),
            u64(deadline_ms, "deadline_ms"),
        )
        return str(self._move(signer, MoveCall("tickets", "create", args, 0, _SALE_CREATED)))

    def buy_tickets(self, signer: HostIdentity, sale_id: str, count: int) -> None:
        """``tickets::buy``: ``count * ticket_price`` MIST from the signer."""
        check_signer(signer)
        u64(count, "count")
        payment = u64(count * self.get_ticket_sale(sale_id).ticket_price, "the payment")
        args = (Id(sale_id), count, payment)
        self._move(signer, MoveCall("tickets", "buy", args, payment))

    def go_on_air(self, signer: HostIdentity, sale_id: str) -> int:
        """``tickets::go_on_air`` (organizer): returns the revenue paid out."""
        check_signer(signer)
        call = MoveCall("tickets", "go_on_air", (Id(sale_id),), 0, _ON_AIR)
        return int(self._move(signer, call))

    def cancel_ticket_sale(self, signer: HostIdentity, sale_id: str) -> None:
        """``tickets::cancel`` (organizer)."""
        check_signer(signer)
        self._move(signer, MoveCall("tickets", "cancel", (Id(sale_id),)))

    def refund_tickets(self, signer: HostIdentity, sale_id: str) -> int:
        """``tickets::refund`` (a buyer, after cancel or a missed deadline)."""
        check_signer(signer)
        call = MoveCall("tickets", "refund", (Id(sale_id),), 0, _TICKETS_REFUNDED)
        return int(self._move(signer, call))

    def get_ticket_sale(self, sale_id: str) -> TicketSale:
        """The TicketSale ``sale_id``."""
        return self._typed_model(sale_id, "TicketSale", TicketSale)

    # -- retention -----------------------------------------------------------------------------

    def create_retention_terms(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        """``retention::create_terms`` (host authority). Returns the terms' ID."""
        check_signer(signer)
        port = check_port(port)
        terms = (u64(retention_ms, "retention_ms"), u64(storage_price_per_byte, _PER_BYTE))
        args = (Id(host_id), port, *terms)
        call = MoveCall("retention", "create_terms", args, 0, _TERMS_CREATED)
        return str(self._move(signer, call))

    def retire_retention_terms(self, signer: HostIdentity, terms_id: str) -> None:
        """``retention::retire_terms`` (the host's authority): sends refuse the terms
        from now on (``ETermsRetired``); records kept under them keep their deadlines."""
        check_signer(signer)
        host = Id(self.get_retention_terms(terms_id).host)
        self._move(signer, MoveCall("retention", "retire_terms", (Id(terms_id), host)))

    def replace_retention_terms(
        self,
        signer: HostIdentity,
        terms_id: str,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        """``retention::replace_terms`` (the host's authority): retire ``terms_id`` and
        publish new terms for its port in one transaction. Returns the new terms' ID."""
        check_signer(signer)
        terms = (u64(retention_ms, "retention_ms"), u64(storage_price_per_byte, _PER_BYTE))
        host = Id(self.get_retention_terms(terms_id).host)
        args = (Id(terms_id), host, *terms)
        call = MoveCall("retention", "replace_terms", args, 0, _TERMS_CREATED)
        return str(self._move(signer, call))

    def send_retained(
        self, signer: HostIdentity, pipe_id: str, terms_id: str, inner: int, data: bytes
    ) -> str:
        """``retention::send``: send ``data`` on the pipe of an Open connection and retain
        it with a deposit of ``len(data) * storage_price_per_byte``, under live terms of
        the connection's service. Returns the RetainedRecord ID."""
        check_signer(signer)
        # before len(): the deposit is for the bytes sent (len() of an array('I') counts
        # items, and retention::send aborts EWrongDeposit unless deposit == bytes * price)
        payload = as_bytes(data, "data")
        u64(inner, "inner")
        pipe = cast(_Reads, self).get_pipe(pipe_id)
        deposit = u64(self.get_retention_terms(terms_id).deposit_for(len(payload)), _DEPOSIT)
        objects = (Id(pipe_id), Id(pipe.connection))
        args = (*objects, Id(terms_id), inner, payload, deposit)
        call = MoveCall("retention", "send", args, deposit, "RecordRetained.record")
        return str(self._move(signer, call))

    def confirm_consumed(self, signer: HostIdentity, record_id: str) -> None:
        """``retention::confirm`` (the receiver)."""
        check_signer(signer)
        self._move(signer, MoveCall("retention", "confirm", (Id(record_id),)))

    def delete_retained(self, signer: HostIdentity, record_id: str) -> int:
        """``retention::delete`` (the sender): returns the deposit refunded. A confirmed
        record goes once its retention time has passed, an unconfirmed one once twice
        that has (:attr:`RetainedRecord.reclaim_after_ms`)."""
        check_signer(signer)
        call = MoveCall("retention", "delete", (Id(record_id),), 0, _DELETED)
        return int(self._move(signer, call))

    def get_retention_terms(self, terms_id: str) -> RetentionTerms:
        """The RetentionTerms ``terms_id``."""
        return self._typed_model(terms_id, "RetentionTerms", RetentionTerms)

    def get_retained_record(self, record_id: str) -> RetainedRecord:
        """The RetainedRecord ``record_id``."""
        return self._typed_model(record_id, "RetainedRecord", RetainedRecord)
