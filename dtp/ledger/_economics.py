"""The payment models beyond per-byte escrow (docs/escrow.md §13-16): typed objects and the
ledger methods behind them.

- **Subscriptions** (``dtp::subscription``): access to one service bought by the epoch;
  a live subscription opens connections with an all-zero SLA.
- **Sponsoring** (``dtp::sponsor``): the provider pays ``share_bps`` of its clients'
  fees from a funded pool; the split is public before opening.
- **Tickets** (``dtp::tickets``): an event goes on air only once ``min_tickets`` sold;
  otherwise every buyer is refunded.
- **Retention** (``dtp::retention``): data sent through the ledger carrier is kept with
  a storage deposit per byte, returned when the sender deletes it after the retention
  time and the receiver's confirmation -- or, unconfirmed, once twice the retention time
  has passed: no deposit is held beyond ``2 * MAX_RETENTION_MS``.

:class:`PaymentModels` is mixed into :class:`~dtp.ledger.interface.Ledger`; its methods raise
NotImplementedError unless a ledger implements them (both built-in ledgers do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from dtp.errors import InvalidArgument
from dtp.ledger._objects import OpenedConnection

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "BPS",
    "MAX_PAYMENT_MEMO",
    "MAX_RETENTION_MS",
    "PaymentModels",
    "RetainedRecord",
    "RetentionTerms",
    "SponsorPool",
    "Subscription",
    "SubscriptionOffer",
    "TicketSale",
    "economics_object_from_fields",
    "sponsor_split",
]

#: 100% in basis points (``SponsorPool.share_bps``).
BPS: Final = 10_000

#: Longest memo of a ``payment::pay`` (bytes).
MAX_PAYMENT_MEMO: Final = 256

#: The longest retention terms may ask (``retention::MAX_RETENTION_MS``, 30 days): an
#: unconfirmed record's deposit comes back after twice its retention time at most.
MAX_RETENTION_MS: Final = 2_592_000_000

_U64_MAX: Final = 2**64 - 1


def _whole(value: int, what: str, top: int) -> int:
    # bool is an int, and a float or a negative number would give a split or a deposit
    # that no Move call can produce: refuse them as the u64 arguments they stand for
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise InvalidArgument(f"{what} must be an integer from 0 to {top}, got {value!r}.")
    return value


def sponsor_split(fee: int, share_bps: int) -> tuple[int, int]:
    """``sponsor::quote``: (what the client bears, what the provider pays) of ``fee``.
    Raises InvalidArgument unless ``fee`` is a u64 and ``0 <= share_bps <= BPS``."""
    _whole(fee, "the fee", _U64_MAX)
    _whole(share_bps, "share_bps", BPS)
    provider = fee * share_bps // BPS
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

    def is_live(self, epoch: int) -> bool:
        """Whether the subscription grants access in ``epoch``."""
        return self.start_epoch <= epoch < self.expires_epoch

    def over(self, offer: SubscriptionOffer, epoch: int) -> str | None:
        """``subscription::is_over`` worded: None while the subscription covers its
        connections in ``epoch``, else why not (its offer withdrawn, or the epochs it
        covers)."""
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
        return None


@dataclass(frozen=True)
class SponsorPool:
    """``dtp::sponsor::SponsorPool`` (shared)."""

    id: str
    version: int
    host: str
    port: int
    #: The host's authority that made the pool: its money, and the one whose
    #: connections it sponsors (none after an authority change; docs/escrow.md §14).
    provider: str
    #: The provider's share of each sponsored connection's fees, in basis points.
    share_bps: int
    #: MIST in the pool, pledged or not.
    funds: int
    #: Part of :attr:`funds` pledged to open sponsored connections.
    reserved: int
    #: The most the pool pledges to one connection (0: it sponsors nothing new).
    max_pledge: int = _U64_MAX

    @property
    def available(self) -> int:
        """MIST the pool can still pledge or the provider withdraw."""
        return self.funds - self.reserved

    def pledge_for(self, deposit: int) -> int:
        """The pledge a connection opened now with ``deposit`` would get:
        ``min(deposit × share_bps / 10000, max_pledge)``, rounded down (``sponsor::
        pledge_for``). Raises InvalidArgument for a deposit that is not a u64."""
        whole = _whole(deposit, "the deposit", _U64_MAX)
        return min(whole * self.share_bps // BPS, self.max_pledge)

    def quote(self, fee: int) -> tuple[int, int]:
        """The split of ``fee`` shown before opening: (client pays, provider pays).
        Raises InvalidArgument for a fee that is not a u64."""
        return sponsor_split(fee, self.share_bps)


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

    def deposit_for(self, size: int) -> int:
        """The storage deposit of a record of ``size`` bytes (InvalidArgument for a size
        that is not a non-negative integer)."""
        return _whole(size, "the record size", _U64_MAX) * self.storage_price_per_byte


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


#: Struct name -> Move module, for the objects of this module.
ECONOMICS_MODULES: Final = {
    "SubscriptionOffer": "subscription",
    "Subscription": "subscription",
    "SponsorPool": "sponsor",
    "TicketSale": "tickets",
    "RetentionTerms": "retention",
    "RetainedRecord": "retention",
}

EconomicsObject = (
    SubscriptionOffer | Subscription | SponsorPool | TicketSale | RetentionTerms | RetainedRecord
)
_M = TypeVar("_M", bound=EconomicsObject)

_AREAS: Final = {
    "SubscriptionOffer": "subscriptions",
    "Subscription": "subscriptions",
    "SponsorPool": "sponsor pools",
    "TicketSale": "ticket sales",
    "RetentionTerms": "retention",
    "RetainedRecord": "retention",
}
"""The payment model each object type belongs to (for "this ledger has no ...")."""


def economics_object_from_fields(
    name: str, object_id: str, version: int, d: Mapping[str, Any]
) -> EconomicsObject:
    """The typed view of a payment-model object from its Move fields (balances as ints,
    a TicketSale's ``holders`` table as a dict). Raises ValueError for other names."""
    if name == "SubscriptionOffer":
        return SubscriptionOffer(
            object_id,
            version,
            d["host"],
            d["port"],
            d["provider"],
            d["price_per_epoch"],
            d["period_epochs"],
            d["withdrawn"],
            d["withdrawn_epoch"],
        )
    if name == "Subscription":
        return Subscription(
            object_id,
            version,
            d["offer"],
            d["holder"],
            d["price_per_epoch"],
            d["start_epoch"],
            d["expires_epoch"],
            d["claimed_epochs"],
            d["funds"],
            d["refunded"],
        )
    if name == "SponsorPool":
        return SponsorPool(
            object_id,
            version,
            d["host"],
            d["port"],
            d["provider"],
            d["share_bps"],
            d["funds"],
            d["reserved"],
            # a pool a LocalLedger file kept from before the limit pledged without one
            d.get("max_pledge", _U64_MAX),
        )
    if name == "TicketSale":
        return TicketSale(
            object_id,
            version,
            d["organizer"],
            d["title"],
            d["ticket_price"],
            d["min_tickets"],
            d["max_tickets"],
            d["deadline_ms"],
            d["sold"],
            dict(d.get("holders", {})),
            d["funds"],
            d["on_air"],
            d["cancelled"],
        )
    if name == "RetentionTerms":
        return RetentionTerms(
            object_id,
            version,
            d["host"],
            d["port"],
            d["retention_ms"],
            d["storage_price_per_byte"],
            # (terms stored before they could be retired have no flag: live)
            d.get("retired", False),
        )
    if name == "RetainedRecord":
        return RetainedRecord(
            object_id,
            version,
            d["connection"],
            d["pipe"],
            d["inner"],
            d["seq"],
            d["sender"],
            d["receiver"],
            d["data"],
            d["stored_at_ms"],
            d["retention_ms"],
            d["deposit"],
            d["consumed"],
        )
    raise ValueError(f"{name} is not a payment-model object")


def _missing(ledger: object, what: str) -> NotImplementedError:
    return NotImplementedError(f"{type(ledger).__name__} has no {what}")


class PaymentModels:
    """Ledger methods of the payment models; one per entry function of
    ``dtp::subscription``, ``dtp::sponsor``, ``dtp::tickets`` and ``dtp::retention``."""

    def _model(self, object_id: str, struct: str) -> EconomicsObject:
        """Read the payment-model object ``object_id`` of Move type ``struct`` (each
        ledger reads its own way); the typed getters below are built on it."""
        raise _missing(self, _AREAS[struct])

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
        raise _missing(self, "subscriptions")

    def subscribe(self, signer: HostIdentity, offer_id: str, epochs: int) -> str:
        """``subscription::subscribe``: pay ``epochs * price_per_epoch`` MIST for epochs
        ``[now, now + epochs)``. Returns the subscription ID."""
        raise _missing(self, "subscriptions")

    def renew_subscription(self, signer: HostIdentity, subscription_id: str, epochs: int) -> int:
        """``subscription::renew`` (holder). Returns the new ``expires_epoch``."""
        raise _missing(self, "subscriptions")

    def claim_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        """``subscription::claim`` (provider): the MIST of the begun, unpaid epochs."""
        raise _missing(self, "subscriptions")

    def withdraw_subscription_offer(self, signer: HostIdentity, offer_id: str) -> None:
        """``subscription::withdraw_offer`` (provider)."""
        raise _missing(self, "subscriptions")

    def refund_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        """``subscription::refund`` (holder, after withdrawal): the unused whole epochs."""
        raise _missing(self, "subscriptions")

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
        offer's service. ``host_id`` defaults to the offer's host."""
        raise _missing(self, "subscriptions")

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
        raise _missing(self, "subscriptions")

    def get_subscription_offer(self, offer_id: str) -> SubscriptionOffer:
        """The SubscriptionOffer ``offer_id``."""
        return self._typed_model(offer_id, "SubscriptionOffer", SubscriptionOffer)

    def get_subscription(self, subscription_id: str) -> Subscription:
        """The Subscription ``subscription_id``."""
        return self._typed_model(subscription_id, "Subscription", Subscription)

    # -- sponsoring ----------------------------------------------------------------------------

    def create_sponsor_pool(
        self, signer: HostIdentity, host_id: str, port: int, share_bps: int, *, max_pledge: int
    ) -> str:
        """``sponsor::create`` (host authority): a pool paying back ``share_bps`` of the
        fees of the service on ``port``, pledging at most ``max_pledge`` MIST to any one
        connection, so that no client locks the pool with one large deposit
        (docs/escrow.md §14). Returns the pool ID."""
        raise _missing(self, "sponsor pools")

    def set_sponsor_max_pledge(self, signer: HostIdentity, pool_id: str, max_pledge: int) -> None:
        """``sponsor::set_max_pledge`` (provider): the most the pool pledges to one
        connection opened from now on (0 pauses the sponsoring)."""
        raise _missing(self, "sponsor pools")

    def fund_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        """``sponsor::fund``: ``amount`` MIST from the signer into the pool."""
        raise _missing(self, "sponsor pools")

    def withdraw_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        """``sponsor::withdraw`` (provider): unpledged MIST back to the provider."""
        raise _missing(self, "sponsor pools")

    def open_sponsored_connection(
        self,
        signer: HostIdentity,
        pool_id: str,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
        host_id: str | None = None,
    ) -> OpenedConnection:
        """``sponsor::open_connection``: open with the pool pledging its share."""
        raise _missing(self, "sponsor pools")

    def reimburse(
        self,
        signer: HostIdentity,
        pool_id: str,
        connection_id: str,
        escrow_id: str | None = None,
    ) -> int:
        """``sponsor::reimburse`` (anyone, after settlement): returns the MIST paid to the
        connection's client."""
        raise _missing(self, "sponsor pools")

    def get_sponsor_pool(self, pool_id: str) -> SponsorPool:
        """The SponsorPool ``pool_id``."""
        return self._typed_model(pool_id, "SponsorPool", SponsorPool)

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
        raise _missing(self, "ticketed broadcasts")

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
        raise _missing(self, "ticket sales")

    def buy_tickets(self, signer: HostIdentity, sale_id: str, count: int) -> None:
        """``tickets::buy``: ``count * ticket_price`` MIST from the signer."""
        raise _missing(self, "ticket sales")

    def go_on_air(self, signer: HostIdentity, sale_id: str) -> int:
        """``tickets::go_on_air`` (organizer): returns the revenue paid out."""
        raise _missing(self, "ticket sales")

    def cancel_ticket_sale(self, signer: HostIdentity, sale_id: str) -> None:
        """``tickets::cancel`` (organizer)."""
        raise _missing(self, "ticket sales")

    def refund_tickets(self, signer: HostIdentity, sale_id: str) -> int:
        """``tickets::refund`` (a buyer, after cancel or a missed deadline)."""
        raise _missing(self, "ticket sales")

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
        raise _missing(self, "retention")

    def retire_retention_terms(self, signer: HostIdentity, terms_id: str) -> None:
        """``retention::retire_terms`` (the host's authority): sends refuse the terms
        from now on (``ETermsRetired``); records kept under them keep their deadlines."""
        raise _missing(self, "retention")

    def replace_retention_terms(
        self,
        signer: HostIdentity,
        terms_id: str,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        """``retention::replace_terms`` (the host's authority): retire ``terms_id`` and
        publish new terms for its port in one transaction. Returns the new terms' ID."""
        raise _missing(self, "retention")

    def send_retained(
        self, signer: HostIdentity, pipe_id: str, terms_id: str, inner: int, data: bytes
    ) -> str:
        """``retention::send``: send ``data`` on the pipe of an Open connection and retain
        it with a deposit of ``len(data) * storage_price_per_byte``, under live terms of
        the connection's service. Returns the RetainedRecord ID."""
        raise _missing(self, "retention")

    def confirm_consumed(self, signer: HostIdentity, record_id: str) -> None:
        """``retention::confirm`` (the receiver)."""
        raise _missing(self, "retention")

    def delete_retained(self, signer: HostIdentity, record_id: str) -> int:
        """``retention::delete`` (the sender): returns the deposit refunded. A confirmed
        record goes once its retention time has passed, an unconfirmed one once twice
        that has (:attr:`RetainedRecord.reclaim_after_ms`)."""
        raise _missing(self, "retention")

    def get_retention_terms(self, terms_id: str) -> RetentionTerms:
        """The RetentionTerms ``terms_id``."""
        return self._typed_model(terms_id, "RetentionTerms", RetentionTerms)

    def get_retained_record(self, record_id: str) -> RetainedRecord:
        """The RetainedRecord ``record_id``."""
        return self._typed_model(record_id, "RetainedRecord", RetainedRecord)
