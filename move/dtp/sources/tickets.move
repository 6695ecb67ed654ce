/// Ticketed events: a broadcast or event goes on air only if enough tickets sell.
///
/// The organizer creates a `TicketSale` with a ticket price, a threshold `min_tickets`,
/// an optional cap `max_tickets` (0 = unlimited) and a `deadline_ms`. Buyers pay into the
/// sale; nothing reaches the organizer until it calls `go_on_air`, which needs at least
/// `min_tickets` sold by the deadline and pays out the whole revenue. If the event never
/// goes on air (the deadline passes first, or the organizer cancels), every buyer takes
/// back exactly what it paid with `refund`.
///
/// Conservation: `funds == sold * ticket_price` until it goes on air (then 0); each
/// refund removes the buyer's tickets from `sold` and their price from `funds`.
module dtp::tickets;

use dtp::version::{Self, AdminCap};
use std::string::{Self, String};
use sui::balance::{Self, Balance};
use sui::clock::Clock;
use sui::coin::{Self, Coin};
use sui::event;
use sui::sui::SUI;
use sui::table::{Self, Table};

// === Errors ===

#[error(code = 210)]
const ENotOrganizer: vector<u8> = b"Only the organizer can do this";
#[error(code = 211)]
const EInvalidTerms: vector<u8> = b"Price and threshold must be positive, the cap at least the threshold, the deadline ahead";
#[error(code = 212)]
const EWrongPayment: vector<u8> = b"Payment must be a positive number of tickets times the price";
#[error(code = 213)]
const ESoldOut: vector<u8> = b"Not that many tickets are left";
#[error(code = 214)]
const ESaleClosed: vector<u8> = b"The sale's deadline has passed";
#[error(code = 215)]
const EThresholdNotMet: vector<u8> = b"Fewer tickets sold than the threshold";
#[error(code = 216)]
const EAlreadyOnAir: vector<u8> = b"The event is already on air";
#[error(code = 217)]
const ERefundNotOpen: vector<u8> = b"Refunds open only after a cancel or a missed deadline";
#[error(code = 218)]
const ENoTickets: vector<u8> = b"Sender holds no tickets to refund";
#[error(code = 219)]
const ECancelled: vector<u8> = b"The sale is cancelled";
// 220-251 are other modules': tickets goes on at 252
#[error(code = 252)]
const ENotOnAir: vector<u8> = b"Tickets are given back only once the event went on air (else refunded)";
#[error(code = 253)]
const ESaleNotOver: vector<u8> = b"The sale is not over: not on air, cancelled or past its deadline";
#[error(code = 254)]
const ETicketsHeld: vector<u8> = b"Buyers still hold tickets of the sale";

// === Object ===

public struct TicketSale has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    organizer: address,
    title: String,
    ticket_price: u64,
    /// Tickets that must be sold before the event may go on air.
    min_tickets: u64,
    /// Most tickets sold; 0 means unlimited.
    max_tickets: u64,
    /// Going on air must happen by this time (ms), or buyers get refunds.
    deadline_ms: u64,
    /// Tickets sold and not refunded.
    sold: u64,
    /// Tickets per buyer (removed when refunded).
    holders: Table<address, u64>,
    funds: Balance<SUI>,
    on_air: bool,
    cancelled: bool,
}

// === Events ===

public struct TicketSaleCreated has copy, drop {
    sale: ID,
    organizer: address,
    title: String,
    ticket_price: u64,
    min_tickets: u64,
    max_tickets: u64,
    deadline_ms: u64,
}

public struct TicketsBought has copy, drop {
    sale: ID,
    buyer: address,
    count: u64,
    sold: u64,
}

public struct TicketedEventOnAir has copy, drop {
    sale: ID,
    sold: u64,
    revenue: u64,
}

public struct TicketSaleCancelled has copy, drop {
    sale: ID,
    sold: u64,
}

public struct TicketsRefunded has copy, drop {
    sale: ID,
    buyer: address,
    count: u64,
    amount: u64,
}

public struct TicketsGivenBack has copy, drop {
    sale: ID,
    buyer: address,
    count: u64,
}

public struct TicketSaleDeleted has copy, drop {
    sale: ID,
    organizer: address,
}

// === Organizer ===

/// Open a sale. Checks (`EInvalidTerms`): price > 0, min_tickets > 0, max_tickets == 0 or
/// >= min_tickets, deadline_ms > now. Returns the sale's ID.
public fun create(
    title: vector<u8>,
    ticket_price: u64,
    min_tickets: u64,
    max_tickets: u64,
    deadline_ms: u64,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    assert!(
        ticket_price > 0 && min_tickets > 0 &&
            (max_tickets == 0 || max_tickets >= min_tickets) &&
            deadline_ms > clock.timestamp_ms(),
        EInvalidTerms,
    );
    let title = string::utf8(title);
    let sale = TicketSale {
        id: object::new(ctx),
        version: version::current(),
        organizer: ctx.sender(),
        title,
        ticket_price,
        min_tickets,
        max_tickets,
        deadline_ms,
        sold: 0,
        holders: table::new(ctx),
        funds: balance::zero(),
        on_air: false,
        cancelled: false,
    };
    let sale_id = object::id(&sale);
    event::emit(TicketSaleCreated {
        sale: sale_id,
        organizer: sale.organizer,
        title,
        ticket_price,
        min_tickets,
        max_tickets,
        deadline_ms,
    });
    transfer::share_object(sale);
    sale_id
}

/// Go on air: the threshold is met before the deadline, so the revenue is the
/// organizer's. Checks: organizer (`ENotOrganizer`), not cancelled (`ECancelled`), not on
/// air (`EAlreadyOnAir`), now <= deadline (`ESaleClosed`), sold >= min_tickets
/// (`EThresholdNotMet`). Returns the revenue paid.
public fun go_on_air(sale: &mut TicketSale, clock: &Clock, ctx: &mut TxContext): u64 {
    sale.check_version();
    assert!(ctx.sender() == sale.organizer, ENotOrganizer);
    assert!(!sale.cancelled, ECancelled);
    assert!(!sale.on_air, EAlreadyOnAir);
    assert!(clock.timestamp_ms() <= sale.deadline_ms, ESaleClosed);
    assert!(sale.sold >= sale.min_tickets, EThresholdNotMet);
    sale.on_air = true;
    let revenue = sale.funds.value();
    if (revenue > 0) {
        let all = sale.funds.withdraw_all();
        transfer::public_transfer(coin::from_balance(all, ctx), sale.organizer);
    };
    event::emit(TicketedEventOnAir { sale: object::id(sale), sold: sale.sold, revenue });
    revenue
}

/// Call the event off; refunds open at once. Checks: organizer, not cancelled, not on air.
public fun cancel(sale: &mut TicketSale, ctx: &TxContext) {
    sale.check_version();
    assert!(ctx.sender() == sale.organizer, ENotOrganizer);
    assert!(!sale.cancelled, ECancelled);
    assert!(!sale.on_air, EAlreadyOnAir);
    sale.cancelled = true;
    event::emit(TicketSaleCancelled { sale: object::id(sale), sold: sale.sold });
}

// === Buyers ===

/// Buy `count` tickets. Checks: not cancelled (`ECancelled`), not on air
/// (`EAlreadyOnAir`), now <= deadline (`ESaleClosed`), count > 0 and payment == count *
/// price (`EWrongPayment`), the cap (`ESoldOut`).
public fun buy(
    sale: &mut TicketSale,
    count: u64,
    payment: Coin<SUI>,
    clock: &Clock,
    ctx: &TxContext,
) {
    sale.check_version();
    assert!(!sale.cancelled, ECancelled);
    assert!(!sale.on_air, EAlreadyOnAir);
    assert!(clock.timestamp_ms() <= sale.deadline_ms, ESaleClosed);
    assert!(
        count > 0 && (payment.value() as u128) == (count as u128) * (sale.ticket_price as u128),
        EWrongPayment,
    );
    assert!(sale.max_tickets == 0 || sale.sold + count <= sale.max_tickets, ESoldOut);
    sale.funds.join(payment.into_balance());
    let buyer = ctx.sender();
    if (sale.holders.contains(buyer)) {
        let held = sale.holders.borrow_mut(buyer);
        *held = *held + count;
    } else {
        sale.holders.add(buyer, count);
    };
    sale.sold = sale.sold + count;
    event::emit(TicketsBought { sale: object::id(sale), buyer, count, sold: sale.sold });
}

/// Take back what the sender paid, once the event can no longer go on air. Checks:
/// cancelled, or not on air and now > deadline (`ERefundNotOpen`); the sender holds
/// tickets (`ENoTickets`). Returns the refund.
public fun refund(sale: &mut TicketSale, clock: &Clock, ctx: &mut TxContext): u64 {
    sale.check_version();
    let missed = !sale.on_air && clock.timestamp_ms() > sale.deadline_ms;
    assert!(sale.cancelled || missed, ERefundNotOpen);
    let buyer = ctx.sender();
    assert!(sale.holders.contains(buyer), ENoTickets);
    let count = sale.holders.remove(buyer);
    let amount = count * sale.ticket_price;
    sale.sold = sale.sold - count;
    let part = sale.funds.split(amount);
    transfer::public_transfer(coin::from_balance(part, ctx), buyer);
    event::emit(TicketsRefunded { sale: object::id(sale), buyer, count, amount });
    amount
}

// === Giving the storage back ===

/// A buyer gives its tickets back once the event went on air, removing its entry in
/// `holders`, whose storage its first `buy` paid for: Sui credits the rebate of a removed
/// entry to the gas payer of the removing transaction, the buyer's. It no longer holds a
/// ticket (a ticketed broadcast admits it no more); `sold` stays what was sold. Checks: on
/// air (`ENotOnAir`: before, a buyer's way out is `refund`), the sender holds tickets
/// (`ENoTickets`). No MIST moves. Returns the tickets given back.
public fun leave(sale: &mut TicketSale, ctx: &TxContext): u64 {
    sale.check_version();
    assert!(sale.on_air, ENotOnAir);
    let buyer = ctx.sender();
    assert!(sale.holders.contains(buyer), ENoTickets);
    let count = sale.holders.remove(buyer);
    event::emit(TicketsGivenBack { sale: object::id(sale), buyer, count });
    count
}

/// The organizer deletes a sale that is over and holds nothing: its storage, paid by
/// `create`, comes back to it as the deleting transaction's gas payer. Checks: organizer
/// (`ENotOrganizer`), over -- on air, cancelled, or past its deadline -- (`ESaleNotOver`),
/// no entry left in `holders` (`ETicketsHeld`: every buyer refunded, or given its
/// tickets back after the event went on air). Then `funds` is empty (on air: paid out;
/// else `sold` is 0), so no MIST moves.
public fun destroy(sale: TicketSale, clock: &Clock, ctx: &TxContext) {
    sale.check_version();
    assert!(ctx.sender() == sale.organizer, ENotOrganizer);
    let over = sale.on_air || sale.cancelled || clock.timestamp_ms() > sale.deadline_ms;
    assert!(over, ESaleNotOver);
    assert!(sale.holders.is_empty(), ETicketsHeld);
    let TicketSale { id, organizer, holders, funds, .. } = sale;
    holders.destroy_empty();
    funds.destroy_zero();
    event::emit(TicketSaleDeleted { sale: id.to_inner(), organizer });
    id.delete();
}

// === Reading ===

public fun organizer(sale: &TicketSale): address { sale.organizer }

public fun ticket_price(sale: &TicketSale): u64 { sale.ticket_price }

public fun min_tickets(sale: &TicketSale): u64 { sale.min_tickets }

public fun sold(sale: &TicketSale): u64 { sale.sold }

public fun funds_value(sale: &TicketSale): u64 { sale.funds.value() }

public fun is_on_air(sale: &TicketSale): bool { sale.on_air }

public fun is_cancelled(sale: &TicketSale): bool { sale.cancelled }

public fun tickets_of(sale: &TicketSale, buyer: address): u64 {
    if (sale.holders.contains(buyer)) *sale.holders.borrow(buyer) else 0
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `sale` was made by or last migrated to.
public fun package_version(sale: &TicketSale): u64 { sale.version }

/// Abort with `version::EWrongVersion` unless `sale` is of this package's version.
public(package) fun check_version(sale: &TicketSale) { version::check(sale.version) }

/// The admin migrates `sale` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, sale: &mut TicketSale) {
    sale.version = version::migrate(object::id(sale), sale.version);
}

#[test_only]
public fun set_version_for_testing(sale: &mut TicketSale, v: u64) { sale.version = v; }
