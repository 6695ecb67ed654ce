/// A public broadcast channel, paid for by its listeners.
///
/// Time is cut into slots of `slot_ms` starting when the broadcast is created; slot `k`
/// is `[start_ms + k*slot_ms, start_ms + (k+1)*slot_ms)`. Listeners' contributions go into
/// one pool. The broadcast is *on air* while the pool covers the slot in progress
/// (`pool >= slot_price` once completed slots are paid). Each completed slot that the pool
/// covers moves `slot_price` from the pool to the broadcaster's earnings; completed slots
/// the pool could not cover were off air and are skipped (never charged later).
///
/// When the broadcaster cancels, completed slots are paid, the slot in progress is not,
/// and every listener can withdraw the same fraction of what they contributed:
/// `refund = contribution * pool_at_cancel / total_contributed`, rounded on the running
/// total of the contributions refunded so far (each refund rounded down or up, never
/// above the contribution), the last listener to withdraw taking whatever is left, so no
/// MIST is stranded.
///
/// A broadcast may be *ticketed* (`create_ticketed`): it names a `dtp::tickets`
/// `TicketSale` of its broadcaster, and the station that relays it admits only listeners
/// holding a ticket of that sale (`tickets::tickets_of(sale, listener) > 0`), which it
/// reads from the ledger. The chain records the link; the admission is the station's
/// (docs/escrow.md §9).
module dtp::broadcast;

use dtp::tickets::TicketSale;
use std::string::{Self, String};
use sui::balance::{Self, Balance};
use sui::clock::Clock;
use sui::coin::{Self, Coin};
use sui::event;
use sui::sui::SUI;
use sui::table::{Self, Table};

// === Errors ===

#[error(code = 90)]
const ENotBroadcaster: vector<u8> = b"Only the broadcaster can do this";
#[error(code = 91)]
const ENotOnAir: vector<u8> = b"Listeners' contributions do not cover the current slot";
#[error(code = 92)]
const EBroadcastCancelled: vector<u8> = b"Broadcast is cancelled";
#[error(code = 93)]
const ENotCancelled: vector<u8> = b"Refunds open only after the broadcast is cancelled";
#[error(code = 94)]
const ENoContribution: vector<u8> = b"Sender has no contribution to withdraw";
#[error(code = 95)]
const EInvalidSlot: vector<u8> = b"Slot price and slot length must be positive";
#[error(code = 96)]
const EZeroAmount: vector<u8> = b"Contribution must be positive";
#[error(code = 97)]
const EDataTooLarge: vector<u8> = b"Broadcast data exceeds the per-message limit";
#[error(code = 98)]
const ENotOrganizer: vector<u8> = b"Only the ticket sale's organizer can broadcast for it";

/// Largest `data` per transmitted message, in bytes.
/// Sui refuses a pure transaction argument of 16384 bytes or more before any Move
/// code runs, and a `vector<u8>` argument carries a 2-byte length: 16381 is the most
/// a transaction can pass, so it is the bound here too (docs/escrow.md §8).
const MAX_DATA_LENGTH: u64 = 16_381;

// === Object ===

public struct Broadcast has key {
    id: UID,
    broadcaster: address,
    channel: String,
    /// MIST per slot.
    slot_price: u64,
    /// Slot length in milliseconds.
    slot_ms: u64,
    /// Start of slot 0 (creation time).
    start_ms: u64,
    /// First slot not yet accounted for (paid or skipped).
    next_slot: u64,
    /// Slots paid to the broadcaster so far.
    paid_slots: u64,
    /// Listeners' money not yet earned.
    pool: Balance<SUI>,
    /// Earned by the broadcaster and not yet claimed.
    earned: Balance<SUI>,
    /// Contribution per listener (removed when refunded).
    contributions: Table<address, u64>,
    /// Sum of all contributions.
    total_contributed: u64,
    /// Sequence number of the next transmitted message.
    next_seq: u64,
    cancelled: bool,
    /// Pool value when cancelled: the base of every refund.
    refund_base: u64,
    /// Contributions not yet refunded (after cancel).
    outstanding: u64,
    /// The ticket sale whose holders alone may listen (`create_ticketed`); none for an
    /// open broadcast.
    ticket_sale: Option<ID>,
}

// === Events ===

public struct BroadcastCreated has copy, drop {
    broadcast: ID,
    broadcaster: address,
    channel: String,
    slot_price: u64,
    slot_ms: u64,
    start_ms: u64,
    ticket_sale: Option<ID>,
}

public struct BroadcastContributed has copy, drop {
    broadcast: ID,
    listener: address,
    amount: u64,
    /// The listener's total contribution after this one.
    contribution: u64,
    pool: u64,
}

public struct BroadcastTransmitted has copy, drop {
    broadcast: ID,
    seq: u64,
    data: vector<u8>,
}

public struct BroadcastClaimed has copy, drop {
    broadcast: ID,
    amount: u64,
    paid_slots: u64,
}

public struct BroadcastCancelled has copy, drop {
    broadcast: ID,
    at_ms: u64,
    refundable: u64,
}

public struct ContributionRefunded has copy, drop {
    broadcast: ID,
    listener: address,
    amount: u64,
}

// === Broadcaster ===

/// Create and share a broadcast with the sender as broadcaster; slot 0 starts now.
public fun create(
    channel: vector<u8>,
    slot_price: u64,
    slot_ms: u64,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    new(channel, slot_price, slot_ms, option::none(), clock, ctx)
}

/// `create` for the holders of `sale`'s tickets only: the broadcast records the sale, and
/// its station admits a listener only while the ledger shows it holding at least one of
/// its tickets. Checks: the sender is the sale's organizer (`ENotOrganizer`), then those
/// of `create`.
public fun create_ticketed(
    sale: &TicketSale,
    channel: vector<u8>,
    slot_price: u64,
    slot_ms: u64,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    assert!(ctx.sender() == sale.organizer(), ENotOrganizer);
    new(channel, slot_price, slot_ms, option::some(object::id(sale)), clock, ctx)
}

fun new(
    channel: vector<u8>,
    slot_price: u64,
    slot_ms: u64,
    ticket_sale: Option<ID>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    assert!(slot_price > 0 && slot_ms > 0, EInvalidSlot);
    let channel = string::utf8(channel);
    let start_ms = clock.timestamp_ms();
    let b = Broadcast {
        id: object::new(ctx),
        broadcaster: ctx.sender(),
        channel,
        slot_price,
        slot_ms,
        start_ms,
        next_slot: 0,
        paid_slots: 0,
        pool: balance::zero(),
        earned: balance::zero(),
        contributions: table::new(ctx),
        total_contributed: 0,
        next_seq: 0,
        cancelled: false,
        refund_base: 0,
        outstanding: 0,
        ticket_sale,
    };
    let broadcast_id = object::id(&b);
    event::emit(BroadcastCreated {
        broadcast: broadcast_id,
        broadcaster: b.broadcaster,
        channel,
        slot_price,
        slot_ms,
        start_ms,
        ticket_sale,
    });
    transfer::share_object(b);
    broadcast_id
}

/// Publish one message on the channel; only while on air. Returns its sequence number.
public fun transmit(b: &mut Broadcast, data: vector<u8>, clock: &Clock, ctx: &TxContext): u64 {
    assert!(ctx.sender() == b.broadcaster, ENotBroadcaster);
    assert!(!b.cancelled, EBroadcastCancelled);
    assert!(data.length() <= MAX_DATA_LENGTH, EDataTooLarge);
    b.accrue(clock.timestamp_ms());
    assert!(b.pool.value() >= b.slot_price, ENotOnAir);
    let seq = b.next_seq;
    b.next_seq = seq + 1;
    event::emit(BroadcastTransmitted { broadcast: object::id(b), seq, data });
    seq
}

/// Pay the broadcaster for every completed, covered slot. Returns the amount sent
/// (no coin is sent when it is 0). Also works after cancel, for slots paid before it.
public fun claim(b: &mut Broadcast, clock: &Clock, ctx: &mut TxContext): u64 {
    assert!(ctx.sender() == b.broadcaster, ENotBroadcaster);
    b.accrue(clock.timestamp_ms());
    let amount = b.earned.value();
    if (amount > 0) {
        let pay = b.earned.withdraw_all();
        transfer::public_transfer(coin::from_balance(pay, ctx), b.broadcaster);
    };
    event::emit(BroadcastClaimed { broadcast: object::id(b), amount, paid_slots: b.paid_slots });
    amount
}

/// Stop the broadcast: completed slots are paid, the rest of the pool becomes refundable.
public fun cancel(b: &mut Broadcast, clock: &Clock, ctx: &TxContext) {
    assert!(ctx.sender() == b.broadcaster, ENotBroadcaster);
    assert!(!b.cancelled, EBroadcastCancelled);
    let now = clock.timestamp_ms();
    b.accrue(now);
    b.cancelled = true;
    b.refund_base = b.pool.value();
    b.outstanding = b.total_contributed;
    event::emit(BroadcastCancelled { broadcast: object::id(b), at_ms: now, refundable: b.refund_base });
}

// === Listeners ===

/// Add `payment` to the pool on the sender's behalf.
public fun contribute(b: &mut Broadcast, payment: Coin<SUI>, clock: &Clock, ctx: &TxContext) {
    assert!(!b.cancelled, EBroadcastCancelled);
    let amount = payment.value();
    assert!(amount > 0, EZeroAmount);
    // Account for elapsed slots first, so new money never pays for past slots.
    b.accrue(clock.timestamp_ms());
    b.pool.join(payment.into_balance());
    let listener = ctx.sender();
    let contribution = if (b.contributions.contains(listener)) {
        let c = b.contributions.borrow_mut(listener);
        *c = *c + amount;
        *c
    } else {
        b.contributions.add(listener, amount);
        amount
    };
    b.total_contributed = b.total_contributed + amount;
    event::emit(BroadcastContributed {
        broadcast: object::id(b),
        listener,
        amount,
        contribution,
        pool: b.pool.value(),
    });
}

/// After cancel, take back the sender's share of what is left. Returns the amount sent
/// (no coin is sent when it is 0).
public fun withdraw(b: &mut Broadcast, ctx: &mut TxContext): u64 {
    assert!(b.cancelled, ENotCancelled);
    let listener = ctx.sender();
    assert!(b.contributions.contains(listener), ENoContribution);
    let contribution = b.contributions.remove(listener);
    let amount = if (contribution == b.outstanding) {
        // Last one out takes what is left.
        b.pool.value()
    } else {
        // Rounded on the running total of the contributions refunded so far, not on each
        // share alone: each refund is its exact share rounded down or up (never above
        // the contribution), and rounding leaves nothing for the last one out to gain.
        let total = b.total_contributed as u128;
        let base = b.refund_base as u128;
        let before = ((b.total_contributed - b.outstanding) as u128);
        let share = (before + (contribution as u128)) * base / total - before * base / total;
        (share as u64)
    };
    b.outstanding = b.outstanding - contribution;
    if (amount > 0) {
        let refund = b.pool.split(amount);
        transfer::public_transfer(coin::from_balance(refund, ctx), listener);
    };
    event::emit(ContributionRefunded { broadcast: object::id(b), listener, amount });
    amount
}

// === Reading ===

/// Whether the pool covers the slot in progress at the clock's time.
public fun is_on_air(b: &Broadcast, clock: &Clock): bool {
    if (b.cancelled) return false;
    let (paid, _) = b.due(clock.timestamp_ms());
    b.pool.value() - paid * b.slot_price >= b.slot_price
}

/// Index of the slot in progress at `now_ms`.
public fun slot_at(b: &Broadcast, now_ms: u64): u64 {
    if (now_ms < b.start_ms) 0 else (now_ms - b.start_ms) / b.slot_ms
}

public fun broadcaster(b: &Broadcast): address { b.broadcaster }

public fun channel(b: &Broadcast): String { b.channel }

public fun slot_price(b: &Broadcast): u64 { b.slot_price }

public fun slot_ms(b: &Broadcast): u64 { b.slot_ms }

public fun start_ms(b: &Broadcast): u64 { b.start_ms }

public fun paid_slots(b: &Broadcast): u64 { b.paid_slots }

/// Pool value as last accounted (call `is_on_air` for the time-aware view).
public fun pool_value(b: &Broadcast): u64 { b.pool.value() }

public fun earned_value(b: &Broadcast): u64 { b.earned.value() }

public fun total_contributed(b: &Broadcast): u64 { b.total_contributed }

public fun contribution_of(b: &Broadcast, listener: address): u64 {
    if (b.contributions.contains(listener)) *b.contributions.borrow(listener) else 0
}

public fun is_cancelled(b: &Broadcast): bool { b.cancelled }

/// The ticket sale whose holders alone may listen; none for an open broadcast.
public fun ticket_sale(b: &Broadcast): Option<ID> { b.ticket_sale }

// === Internal ===

/// Slots to pay at `now_ms` and the slot in progress: completed slots are those below
/// `slot_at(now_ms)` from `next_slot` on; as many are paid as the pool covers.
fun due(b: &Broadcast, now_ms: u64): (u64, u64) {
    let current = b.slot_at(now_ms);
    if (b.cancelled || current <= b.next_slot) return (0, current.max(b.next_slot));
    let completed = current - b.next_slot;
    let affordable = b.pool.value() / b.slot_price;
    (completed.min(affordable), current)
}

/// Move the pay for completed, covered slots from the pool to the earnings, and skip
/// completed slots the pool could not cover.
fun accrue(b: &mut Broadcast, now_ms: u64) {
    let (paid, current) = b.due(now_ms);
    if (paid > 0) {
        let pay = b.pool.split(paid * b.slot_price);
        b.earned.join(pay);
        b.paid_slots = b.paid_slots + paid;
    };
    b.next_slot = current;
}
