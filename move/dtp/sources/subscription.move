/// Pre-paid subscriptions: a service sells access by the epoch instead of by the byte.
///
/// The host's authority publishes a `SubscriptionOffer` for one service (host, port):
/// `price_per_epoch` MIST, sold in multiples of `period_epochs` epochs. A client buys a
/// `Subscription` for epochs `[start_epoch, expires_epoch)`; while it is live the holder
/// opens connections to that service through `open_connection`, which gives them an
/// all-zero SLA (no deposit needed, no per-byte or per-request fee; receipts are for 0).
///
/// Each such connection records its subscription. Once the subscription is **over** --
/// it no longer covers the current epoch, or its offer was withdrawn (a refund follows
/// only a withdrawal) -- anyone may end the connection with `end_connection`: it is
/// closed and settled at once, nothing owed (its fees are all zero) and its deposit
/// back to the client. The paid servers end it themselves as they see the subscription
/// over (docs/escrow.md §13).
///
/// The payment stays in the subscription and is earned epoch by epoch: an epoch is earned
/// by the provider as soon as it has begun (the epoch in progress counts as used).
/// `claim` pays the provider what it earned so far. When the provider withdraws the offer,
/// every holder gets back the epochs that had not begun at the withdrawal (`refund`), and
/// no one can subscribe or renew any more.
///
/// An offer sells for its host only while its provider is the host's authority: after
/// `host::set_authority` to another address, `subscribe`, `renew` and `open_connection`
/// refuse it (`EProviderChanged`), and anyone -- the new authority, a holder, a watcher --
/// may withdraw it, so that the provider earns no epoch begun after the withdrawal and
/// the holders take back the rest (docs/escrow.md §13). Money is conserved at every step:
/// `funds == (expires_epoch - start_epoch - claimed_epochs) * price_per_epoch`.
///
/// Both objects are shared: the provider's claim and the holder's refund touch the same
/// subscription, and a transaction can only use objects owned by its sender. The holder
/// is recorded in `holder`, and only it can renew, refund or open connections.
module dtp::subscription;

use dtp::escrow::Escrow;
use dtp::host::Host;
use dtp::spending_cap::SpendingCap;
use dtp::transport_control::{Self, TransportControl};
use dtp::version::{Self, AdminCap};
use sui::balance::Balance;
use sui::clock::Clock;
use sui::coin::{Self, Coin};
use sui::event;
use sui::sui::SUI;

// === Errors ===

#[error(code = 185)]
const ENotProvider: vector<u8> = b"Only the offer's provider (the host's authority) can do this";
#[error(code = 186)]
const ENotHolder: vector<u8> = b"Only the subscription's holder can do this";
#[error(code = 187)]
const EInvalidTerms: vector<u8> = b"Price per epoch and period must be positive";
#[error(code = 188)]
const EInvalidEpochs: vector<u8> = b"Epochs must be a positive multiple of the offer's period";
#[error(code = 189)]
const EWrongPayment: vector<u8> = b"Payment must be epochs times the price per epoch";
#[error(code = 190)]
const EOfferWithdrawn: vector<u8> = b"The offer is withdrawn";
#[error(code = 191)]
const ESubscriptionExpired: vector<u8> = b"The subscription is not live in this epoch";
#[error(code = 192)]
const EWrongOffer: vector<u8> = b"Not this subscription's offer";
#[error(code = 193)]
const EWrongHost: vector<u8> = b"Not the offer's host";
#[error(code = 194)]
const ENotWithdrawn: vector<u8> = b"Refunds open only after the offer is withdrawn";
#[error(code = 195)]
const EAlreadyRefunded: vector<u8> = b"The subscription was already refunded";
#[error(code = 196)]
const ENotSubscribed: vector<u8> = b"The connection was not opened with this subscription";
#[error(code = 197)]
const ESubscriptionLive: vector<u8> = b"The subscription still covers its connections";
#[error(code = 198)]
const EProviderChanged: vector<u8> = b"The host's authority is no longer the offer's provider: the offer sells nothing more";

// === Objects ===

public struct SubscriptionOffer has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    host: ID,
    port: u16,
    /// The host's authority when the offer was made; receives the earnings. The offer
    /// sells only while it is still the host's authority.
    provider: address,
    price_per_epoch: u64,
    /// Subscriptions and renewals are sold in multiples of this many epochs.
    period_epochs: u64,
    withdrawn: bool,
    /// The epoch in which the offer was withdrawn (meaningful once `withdrawn`).
    withdrawn_epoch: u64,
}

public struct Subscription has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    offer: ID,
    holder: address,
    /// Copied from the offer (an offer's price never changes).
    price_per_epoch: u64,
    /// First epoch paid for.
    start_epoch: u64,
    /// First epoch not paid for.
    expires_epoch: u64,
    /// Epochs from `start_epoch` on already paid to the provider.
    claimed_epochs: u64,
    /// Paid and not yet earned by the provider nor refunded.
    funds: Balance<SUI>,
    refunded: bool,
}

// === Events ===

public struct SubscriptionOfferCreated has copy, drop {
    offer: ID,
    host: ID,
    port: u16,
    provider: address,
    price_per_epoch: u64,
    period_epochs: u64,
}

public struct Subscribed has copy, drop {
    subscription: ID,
    offer: ID,
    holder: address,
    start_epoch: u64,
    expires_epoch: u64,
    paid: u64,
}

public struct SubscriptionRenewed has copy, drop {
    subscription: ID,
    start_epoch: u64,
    expires_epoch: u64,
    paid: u64,
}

public struct SubscriptionClaimed has copy, drop {
    subscription: ID,
    provider: address,
    epochs: u64,
    amount: u64,
}

public struct SubscriptionOfferWithdrawn has copy, drop {
    offer: ID,
    epoch: u64,
}

public struct SubscriptionRefunded has copy, drop {
    subscription: ID,
    holder: address,
    epochs: u64,
    amount: u64,
}

public struct SubscribedConnectionOpened has copy, drop {
    subscription: ID,
    connection: ID,
}

public struct SubscribedConnectionEnded has copy, drop {
    subscription: ID,
    connection: ID,
    /// Who ended it (anyone may, once the subscription is over).
    by: address,
    /// Returned to the client (its deposit, normally 0).
    refunded: u64,
}

// === Provider ===

/// Offer subscriptions to the service `port` of `host`. Checks: sender is the host's
/// authority (`ENotProvider`), the service exists (`host::EServiceNotFound`), price and
/// period are positive (`EInvalidTerms`). Returns the offer's ID.
public fun create_offer(
    host: &Host,
    port: u16,
    price_per_epoch: u64,
    period_epochs: u64,
    ctx: &mut TxContext,
): ID {
    host.check_version();
    assert!(ctx.sender() == host.authority(), ENotProvider);
    let _ = host.service(port);
    assert!(price_per_epoch > 0 && period_epochs > 0, EInvalidTerms);
    let offer = SubscriptionOffer {
        id: object::new(ctx),
        version: version::current(),
        host: object::id(host),
        port,
        provider: ctx.sender(),
        price_per_epoch,
        period_epochs,
        withdrawn: false,
        withdrawn_epoch: 0,
    };
    let offer_id = object::id(&offer);
    event::emit(SubscriptionOfferCreated {
        offer: offer_id,
        host: offer.host,
        port,
        provider: offer.provider,
        price_per_epoch,
        period_epochs,
    });
    transfer::share_object(offer);
    offer_id
}

/// Stop selling: no new subscriptions or renewals; holders may take back the epochs that
/// had not begun (`refund`), and the connections opened with the offer's subscriptions
/// may be ended (`end_connection`). The provider may withdraw at any time; once the host
/// has another authority, anyone may (the offer sells nothing more, and the withdrawal
/// stops its earning: docs/escrow.md §13). Checks: the offer's host (`EWrongHost`), the
/// sender is the provider or the host's authority is no longer the provider
/// (`ENotProvider`), not yet withdrawn (`EOfferWithdrawn`).
public fun withdraw_offer(offer: &mut SubscriptionOffer, host: &Host, ctx: &TxContext) {
    offer.check_offer_version();
    host.check_version();
    assert!(object::id(host) == offer.host, EWrongHost);
    assert!(ctx.sender() == offer.provider || host.authority() != offer.provider, ENotProvider);
    assert!(!offer.withdrawn, EOfferWithdrawn);
    offer.withdrawn = true;
    offer.withdrawn_epoch = ctx.epoch();
    event::emit(SubscriptionOfferWithdrawn { offer: object::id(offer), epoch: ctx.epoch() });
}

/// Pay the provider every epoch of `sub` that has begun and is not paid yet. Checks:
/// provider (`ENotProvider`), the subscription's offer (`EWrongOffer`). Returns the amount
/// (no coin when 0).
public fun claim(
    sub: &mut Subscription,
    offer: &SubscriptionOffer,
    ctx: &mut TxContext,
): u64 {
    sub.check_subscription_version();
    offer.check_offer_version();
    assert!(ctx.sender() == offer.provider, ENotProvider);
    assert!(sub.offer == object::id(offer), EWrongOffer);
    let epochs = sub.earned_epochs(offer, ctx.epoch()) - sub.claimed_epochs;
    let amount = pay_out(sub, epochs, offer.provider, ctx);
    sub.claimed_epochs = sub.claimed_epochs + epochs;
    event::emit(SubscriptionClaimed {
        subscription: object::id(sub),
        provider: offer.provider,
        epochs,
        amount,
    });
    amount
}

// === Holder ===

/// Buy `epochs` epochs of access from the current epoch on. Checks: the offer's host
/// (`EWrongHost`), offer not withdrawn (`EOfferWithdrawn`), its provider still the host's
/// authority (`EProviderChanged`), `epochs` a positive multiple of the period
/// (`EInvalidEpochs`), payment == epochs * price (`EWrongPayment`). Returns the
/// subscription's ID.
public fun subscribe(
    offer: &SubscriptionOffer,
    host: &Host,
    epochs: u64,
    payment: Coin<SUI>,
    ctx: &mut TxContext,
): ID {
    offer.check_offer_version();
    host.check_version();
    offer.assert_selling(host);
    offer.assert_epochs(epochs);
    let paid = payment.value();
    assert!((paid as u128) == (epochs as u128) * (offer.price_per_epoch as u128), EWrongPayment);
    let start = ctx.epoch();
    let sub = Subscription {
        id: object::new(ctx),
        version: version::current(),
        offer: object::id(offer),
        holder: ctx.sender(),
        price_per_epoch: offer.price_per_epoch,
        start_epoch: start,
        expires_epoch: start + epochs,
        claimed_epochs: 0,
        funds: payment.into_balance(),
        refunded: false,
    };
    let sub_id = object::id(&sub);
    event::emit(Subscribed {
        subscription: sub_id,
        offer: sub.offer,
        holder: sub.holder,
        start_epoch: start,
        expires_epoch: sub.expires_epoch,
        paid,
    });
    transfer::share_object(sub);
    sub_id
}

/// Extend `sub` by `epochs`. A live subscription is extended at its end; an expired one
/// first pays the provider everything it earned and then starts afresh at the current
/// epoch (the gap is never paid for). Checks: holder (`ENotHolder`), offer
/// (`EWrongOffer`), the offer's host (`EWrongHost`), not withdrawn (`EOfferWithdrawn`),
/// provider still the host's authority (`EProviderChanged`), epochs (`EInvalidEpochs`),
/// payment (`EWrongPayment`). Returns the new `expires_epoch`.
public fun renew(
    sub: &mut Subscription,
    offer: &SubscriptionOffer,
    host: &Host,
    epochs: u64,
    payment: Coin<SUI>,
    ctx: &mut TxContext,
): u64 {
    sub.check_subscription_version();
    offer.check_offer_version();
    host.check_version();
    assert!(ctx.sender() == sub.holder, ENotHolder);
    assert!(sub.offer == object::id(offer), EWrongOffer);
    offer.assert_selling(host);
    offer.assert_epochs(epochs);
    let paid = payment.value();
    assert!((paid as u128) == (epochs as u128) * (sub.price_per_epoch as u128), EWrongPayment);
    let now = ctx.epoch();
    if (sub.expires_epoch <= now) {
        let due = sub.expires_epoch - sub.start_epoch - sub.claimed_epochs;
        let amount = pay_out(sub, due, offer.provider, ctx);
        event::emit(SubscriptionClaimed {
            subscription: object::id(sub),
            provider: offer.provider,
            epochs: due,
            amount,
        });
        sub.start_epoch = now;
        sub.expires_epoch = now;
        sub.claimed_epochs = 0;
    };
    sub.funds.join(payment.into_balance());
    sub.expires_epoch = sub.expires_epoch + epochs;
    event::emit(SubscriptionRenewed {
        subscription: object::id(sub),
        start_epoch: sub.start_epoch,
        expires_epoch: sub.expires_epoch,
        paid,
    });
    sub.expires_epoch
}

/// After the offer is withdrawn, take back the epochs that had not begun at the
/// withdrawal. Checks: holder (`ENotHolder`), offer (`EWrongOffer`), withdrawn
/// (`ENotWithdrawn`), not refunded before (`EAlreadyRefunded`). Returns the refund.
public fun refund(
    sub: &mut Subscription,
    offer: &SubscriptionOffer,
    ctx: &mut TxContext,
): u64 {
    sub.check_subscription_version();
    offer.check_offer_version();
    assert!(ctx.sender() == sub.holder, ENotHolder);
    assert!(sub.offer == object::id(offer), EWrongOffer);
    assert!(offer.withdrawn, ENotWithdrawn);
    assert!(!sub.refunded, EAlreadyRefunded);
    let last_used = offer.withdrawn_epoch + 1;
    let mut cut = if (sub.expires_epoch < last_used) sub.expires_epoch else last_used;
    if (cut < sub.start_epoch) cut = sub.start_epoch;
    let epochs = sub.expires_epoch - cut;
    let holder = sub.holder;
    let amount = pay_out(sub, epochs, holder, ctx);
    sub.expires_epoch = cut;
    sub.refunded = true;
    event::emit(SubscriptionRefunded { subscription: object::id(sub), holder, epochs, amount });
    amount
}

/// Open a connection to the offer's service with no metering (see
/// `transport_control::open_prepaid`). Checks, before the usual ones of `open`: holder
/// (`ENotHolder`), offer (`EWrongOffer`), the offer's host (`EWrongHost`), not withdrawn
/// (`EOfferWithdrawn`), provider still the host's authority (`EProviderChanged`),
/// `start_epoch <= epoch < expires_epoch` (`ESubscriptionExpired`).
public fun open_connection(
    sub: &Subscription,
    offer: &SubscriptionOffer,
    host: &Host,
    cap: &mut SpendingCap,
    client_public_key: vector<u8>,
    deposit: Coin<SUI>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    sub.check_subscription_version();
    offer.check_offer_version();
    host.check_version();
    cap.check_version();
    assert!(ctx.sender() == sub.holder, ENotHolder);
    assert!(sub.offer == object::id(offer), EWrongOffer);
    offer.assert_selling(host);
    assert!(sub.is_live(ctx.epoch()), ESubscriptionExpired);
    let connection = transport_control::open_prepaid(
        host,
        offer.port,
        cap,
        client_public_key,
        deposit,
        object::id(sub),
        clock,
        ctx,
    );
    event::emit(SubscribedConnectionOpened { subscription: object::id(sub), connection });
    connection
}

// === Anyone ===

/// End a connection opened with `sub` once the subscription is over (`is_over`: not
/// live in the current epoch, or its offer withdrawn): closed and settled in one step,
/// whoever sends it -- the holder, the provider, a watcher. Nothing is owed (the
/// connection's SLA is all zeros), and the escrow's balance (the deposit, normally 0)
/// goes back to the client. Checks: the subscription's offer (`EWrongOffer`), the
/// connection records `sub` (`ENotSubscribed`), the subscription is over
/// (`ESubscriptionLive`), then those of `transport_control::end_prepaid`
/// (`EAlreadySettled`, `EWrongEscrow`, `escrow::EWrongSpendingCap`). Returns the refund.
public fun end_connection(
    sub: &Subscription,
    offer: &SubscriptionOffer,
    tc: &mut TransportControl,
    escrow: &mut Escrow,
    cap: &mut SpendingCap,
    clock: &Clock,
    ctx: &mut TxContext,
): u64 {
    sub.check_subscription_version();
    offer.check_offer_version();
    tc.check_version();
    escrow.check_version();
    cap.check_version();
    assert!(sub.offer == object::id(offer), EWrongOffer);
    assert!(tc.subscription() == option::some(object::id(sub)), ENotSubscribed);
    assert!(sub.is_over(offer, ctx.epoch()), ESubscriptionLive);
    let refunded = transport_control::end_prepaid(tc, escrow, cap, clock, ctx);
    event::emit(SubscribedConnectionEnded {
        subscription: object::id(sub),
        connection: tc.connection_id(),
        by: ctx.sender(),
        refunded,
    });
    refunded
}

// === Reading ===

/// Whether the subscription grants access in `epoch`.
public fun is_live(sub: &Subscription, epoch: u64): bool {
    sub.start_epoch <= epoch && epoch < sub.expires_epoch
}

/// Whether `sub` no longer covers connections in `epoch`: not live then, or its offer
/// withdrawn (whether or not the holder took its refund yet). `open_connection` refuses
/// it, and `end_connection` ends the connections opened with it.
public fun is_over(sub: &Subscription, offer: &SubscriptionOffer, epoch: u64): bool {
    offer.withdrawn || !sub.is_live(epoch)
}

/// Epochs of `sub` the provider has earned by `epoch` (begun, and not after a withdrawal).
public fun earned_epochs(sub: &Subscription, offer: &SubscriptionOffer, epoch: u64): u64 {
    let mut now = epoch;
    if (offer.withdrawn && offer.withdrawn_epoch < now) now = offer.withdrawn_epoch;
    let begun = now + 1;
    let end = if (begun < sub.expires_epoch) begun else sub.expires_epoch;
    if (end <= sub.start_epoch) 0 else end - sub.start_epoch
}

public fun holder(sub: &Subscription): address { sub.holder }

public fun offer_id(sub: &Subscription): ID { sub.offer }

public fun start_epoch(sub: &Subscription): u64 { sub.start_epoch }

public fun expires_epoch(sub: &Subscription): u64 { sub.expires_epoch }

public fun claimed_epochs(sub: &Subscription): u64 { sub.claimed_epochs }

public fun funds_value(sub: &Subscription): u64 { sub.funds.value() }

public fun is_refunded(sub: &Subscription): bool { sub.refunded }

public fun provider(offer: &SubscriptionOffer): address { offer.provider }

public fun host_id(offer: &SubscriptionOffer): ID { offer.host }

public fun port(offer: &SubscriptionOffer): u16 { offer.port }

public fun price_per_epoch(offer: &SubscriptionOffer): u64 { offer.price_per_epoch }

public fun period_epochs(offer: &SubscriptionOffer): u64 { offer.period_epochs }

public fun is_withdrawn(offer: &SubscriptionOffer): bool { offer.withdrawn }

// === Internal ===

/// The offer may sell for `host` now: it is the offer's host (`EWrongHost`), the offer is
/// not withdrawn (`EOfferWithdrawn`), and its provider is still the host's authority
/// (`EProviderChanged`): what it sells is then paid to the one whose server serves it.
fun assert_selling(offer: &SubscriptionOffer, host: &Host) {
    assert!(object::id(host) == offer.host, EWrongHost);
    assert!(!offer.withdrawn, EOfferWithdrawn);
    assert!(host.authority() == offer.provider, EProviderChanged);
}

fun assert_epochs(offer: &SubscriptionOffer, epochs: u64) {
    assert!(epochs > 0 && epochs % offer.period_epochs == 0, EInvalidEpochs);
}

/// Send `epochs * price_per_epoch` out of the subscription to `to` (no coin when 0).
fun pay_out(sub: &mut Subscription, epochs: u64, to: address, ctx: &mut TxContext): u64 {
    let amount = epochs * sub.price_per_epoch;
    if (amount > 0) {
        let part = sub.funds.split(amount);
        transfer::public_transfer(coin::from_balance(part, ctx), to);
    };
    amount
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `offer` was made by or last migrated to.
public fun offer_version(offer: &SubscriptionOffer): u64 { offer.version }

/// Abort with `version::EWrongVersion` unless `offer` is of this package's version.
public(package) fun check_offer_version(offer: &SubscriptionOffer) { version::check(offer.version) }

/// The admin migrates `offer` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate_offer(_: &AdminCap, offer: &mut SubscriptionOffer) {
    offer.version = version::migrate(object::id(offer), offer.version);
}

#[test_only]
public fun set_offer_version_for_testing(offer: &mut SubscriptionOffer, v: u64) { offer.version = v; }

/// The package version `sub` was made by or last migrated to.
public fun subscription_version(sub: &Subscription): u64 { sub.version }

/// Abort with `version::EWrongVersion` unless `sub` is of this package's version.
public(package) fun check_subscription_version(sub: &Subscription) { version::check(sub.version) }

/// The admin migrates `sub` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate_subscription(_: &AdminCap, sub: &mut Subscription) {
    sub.version = version::migrate(object::id(sub), sub.version);
}

#[test_only]
public fun set_subscription_version_for_testing(sub: &mut Subscription, v: u64) { sub.version = v; }
