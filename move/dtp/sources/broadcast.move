/// A public broadcast channel, paid for by its listeners.
///
/// Time is cut into slots of `slot_ms` starting when the broadcast is created; slot `k`
/// is `[start_ms + k*slot_ms, start_ms + (k+1)*slot_ms)`. Listeners' contributions go into
/// one pool. The broadcast is *on air* while the pool covers what is left of the slot in
/// progress (`pool >= slot_price` once completed slots are paid, less the part of the slot
/// a contribution in it already accounted for). Each completed slot that the pool covers
/// moves `slot_price` from the pool to the broadcaster's earnings; completed slots the
/// pool could not cover were off air and are skipped (never charged later).
///
/// A contribution pays only from the moment it joins: before it buys its shares, the part
/// of the slot in progress that has gone by is accounted for with the money that was in
/// the pool during it -- paid pro rata (`slot_price * ms / slot_ms`, rounded down) if the
/// pool covered the slot, skipped if the broadcast was off air -- so the new money shares
/// only the rest of the slot, and never revives air time already past. Every stretch of
/// air time accounted for is told by an event: `BroadcastSlotsPaid` for what the pool
/// paid, `BroadcastSlotsSkipped` for what was off air (docs/escrow.md §9).
///
/// The pool is held in *shares* (docs/escrow.md §9): a contribution buys shares at the
/// pool's value per share when it is made (after the completed slots are paid), so each
/// paid slot lowers every share alike and no listener pays for a slot that ended before
/// it paid in. A listener takes back the value of its shares: after a cancel
/// (`withdraw`), or by leaving a broadcast whose broadcaster has shown no sign of
/// transmitting for `idle_ms` (`leave`). Each refund is the value of its shares rounded
/// down; the last holder out takes what is left, so no MIST is stranded. A pool spent to 0
/// while shares remain starts a new share generation, in which the old shares are worth
/// nothing and new money buys in at the first generation's price.
///
/// A broadcast may be *ticketed* (`create_ticketed`): it names a `dtp::tickets`
/// `TicketSale` of its broadcaster, and the station that relays it admits only listeners
/// holding a ticket of that sale (`tickets::tickets_of(sale, listener) > 0`), which it
/// reads from the ledger. The chain records the link; the admission is the station's
/// (docs/escrow.md §9).
module dtp::broadcast;

use dtp::tickets::TicketSale;
use dtp::version::{Self, AdminCap};
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
#[error(code = 99)]
const EBroadcastLive: vector<u8> = b"The broadcast has not been idle long enough to leave";
#[error(code = 100)]
const EContributionTooSmall: vector<u8> = b"Contribution buys no share at the pool's current value";

/// Largest `data` per transmitted message, in bytes.
/// Sui refuses a pure transaction argument of 16384 bytes or more before any Move
/// code runs, and a `vector<u8>` argument carries a 2-byte length: 16381 is the most
/// a transaction can pass, so it is the bound here too (docs/escrow.md §8).
const MAX_DATA_LENGTH: u64 = 16_381;

/// Shares one MIST buys in a new share generation: fine enough that rounding a
/// contribution's shares down costs it less than a billionth of a MIST.
const SHARE_SCALE: u256 = 1_000_000_000;
/// `total_shares` stays below `2^SHARE_BITS`: past it, the share unit is doubled as often
/// as needed (`share_shift`), so shares never overflow however far the value of a share
/// falls (docs/escrow.md §9).
const SHARE_BITS: u8 = 120;

/// A listener may leave once the broadcaster has shown no sign of transmitting
/// (`transmit`, `heartbeat`) for `IDLE_SLOTS` slots, but never less than `MIN_IDLE_MS`
/// nor more than `MAX_IDLE_MS` (docs/escrow.md §9 says why).
const IDLE_SLOTS: u64 = 3;
const MIN_IDLE_MS: u64 = 600_000;
const MAX_IDLE_MS: u64 = 86_400_000;

// === Object ===

public struct Broadcast has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    broadcaster: address,
    channel: String,
    /// MIST per slot.
    slot_price: u64,
    /// Slot length in milliseconds.
    slot_ms: u64,
    /// Start of slot 0 (creation time).
    start_ms: u64,
    /// First slot not yet accounted for (paid or skipped) to its end.
    next_slot: u64,
    /// How much of slot `next_slot`, in ms from its start, is already accounted for: the
    /// time before a contribution made in it (0 otherwise).
    slot_accounted_ms: u64,
    /// Slots paid to the broadcaster to their end so far (a slot a contribution put on
    /// air part way counts: its part before was skipped).
    paid_slots: u64,
    /// Listeners' money not yet earned: the value of all shares of the current generation.
    pool: Balance<SUI>,
    /// Earned by the broadcaster and not yet claimed.
    earned: Balance<SUI>,
    /// Each listener's stake (removed when it withdraws or leaves).
    stakes: Table<address, Stake>,
    /// Sum of all contributions.
    total_contributed: u64,
    /// Sequence number of the next transmitted message.
    next_seq: u64,
    cancelled: bool,
    /// Shares of the current generation, in units of `2^share_shift` shares; at least the
    /// sum of the holders' shares (a doubling of the unit rounds each stake down).
    total_shares: u128,
    /// Listeners holding a stake of the current generation: the last of them out takes
    /// the pool.
    holders: u64,
    /// Share generation: a new one starts when money comes into a pool spent to 0.
    generation: u64,
    /// How many times the share unit of this generation has been doubled.
    share_shift: u64,
    /// When the broadcaster last showed it was transmitting (`transmit`, `heartbeat`;
    /// the creation time at first): `leave` opens `idle_ms` after it.
    last_live_ms: u64,
    /// The ticket sale whose holders alone may listen (`create_ticketed`); none for an
    /// open broadcast.
    ticket_sale: Option<ID>,
}

/// One listener's part of a broadcast.
public struct Stake has copy, drop, store {
    /// What the listener has paid in (what its tips are checked against).
    contributed: u64,
    /// The generation its shares belong to: those of an earlier one are worth nothing.
    generation: u64,
    /// `share_shift` when `shares` was written: the current value is
    /// `shares >> (share_shift - shift)`.
    shift: u64,
    shares: u128,
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
    /// The listener's shares after this one (in the unit of `share_shift`).
    shares: u128,
}

public struct BroadcastTransmitted has copy, drop {
    broadcast: ID,
    seq: u64,
    data: vector<u8>,
}

public struct BroadcastHeartbeat has copy, drop {
    broadcast: ID,
    at_ms: u64,
}

public struct BroadcastClaimed has copy, drop {
    broadcast: ID,
    amount: u64,
    paid_slots: u64,
}

/// The pool paid the broadcaster `amount` for the air time `[from_ms, to_ms)`, on air all
/// through; `slots` slots ended in it (`paid_slots` grew by that much).
public struct BroadcastSlotsPaid has copy, drop {
    broadcast: ID,
    from_ms: u64,
    to_ms: u64,
    slots: u64,
    amount: u64,
}

/// The air time `[from_ms, to_ms)` was off air (the pool did not cover it): never paid.
public struct BroadcastSlotsSkipped has copy, drop {
    broadcast: ID,
    from_ms: u64,
    to_ms: u64,
}

public struct BroadcastCancelled has copy, drop {
    broadcast: ID,
    at_ms: u64,
    refundable: u64,
}

/// A listener took back the value of its shares (`withdraw` after a cancel, or `leave`).
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
    sale.check_version();
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
        version: version::current(),
        broadcaster: ctx.sender(),
        channel,
        slot_price,
        slot_ms,
        start_ms,
        next_slot: 0,
        slot_accounted_ms: 0,
        paid_slots: 0,
        pool: balance::zero(),
        earned: balance::zero(),
        stakes: table::new(ctx),
        total_contributed: 0,
        next_seq: 0,
        cancelled: false,
        total_shares: 0,
        holders: 0,
        generation: 0,
        share_shift: 0,
        last_live_ms: start_ms,
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
/// The broadcast is live from then on (`last_live_ms`).
public fun transmit(b: &mut Broadcast, data: vector<u8>, clock: &Clock, ctx: &TxContext): u64 {
    b.check_version();
    assert!(ctx.sender() == b.broadcaster, ENotBroadcaster);
    assert!(!b.cancelled, EBroadcastCancelled);
    assert!(data.length() <= MAX_DATA_LENGTH, EDataTooLarge);
    let now = clock.timestamp_ms();
    b.accrue(now);
    assert!(b.pool.value() >= b.slot_rest(), ENotOnAir);
    b.last_live_ms = now;
    let seq = b.next_seq;
    b.next_seq = seq + 1;
    event::emit(BroadcastTransmitted { broadcast: object::id(b), seq, data });
    seq
}

/// The broadcaster records that it is transmitting off the ledger (a station sends its
/// messages over DTP streams, unseen here); only while on air. Keeps listeners from
/// leaving for `idle_ms`: the chain cannot see the messages, so this is the
/// broadcaster's word (docs/escrow.md §9).
public fun heartbeat(b: &mut Broadcast, clock: &Clock, ctx: &TxContext) {
    b.check_version();
    assert!(ctx.sender() == b.broadcaster, ENotBroadcaster);
    assert!(!b.cancelled, EBroadcastCancelled);
    let now = clock.timestamp_ms();
    b.accrue(now);
    assert!(b.pool.value() >= b.slot_rest(), ENotOnAir);
    b.last_live_ms = now;
    event::emit(BroadcastHeartbeat { broadcast: object::id(b), at_ms: now });
}

/// Pay the broadcaster for every completed, covered slot. Returns the amount sent
/// (no coin is sent when it is 0). Also works after cancel, for slots paid before it.
public fun claim(b: &mut Broadcast, clock: &Clock, ctx: &mut TxContext): u64 {
    b.check_version();
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

/// Stop the broadcast: completed slots are paid, the rest of the pool is the listeners'
/// to withdraw, each the value of its shares.
public fun cancel(b: &mut Broadcast, clock: &Clock, ctx: &TxContext) {
    b.check_version();
    assert!(ctx.sender() == b.broadcaster, ENotBroadcaster);
    assert!(!b.cancelled, EBroadcastCancelled);
    let now = clock.timestamp_ms();
    b.accrue(now);
    b.cancelled = true;
    event::emit(BroadcastCancelled {
        broadcast: object::id(b),
        at_ms: now,
        refundable: b.pool.value(),
    });
}

// === Listeners ===

/// Add `payment` to the pool on the sender's behalf: it buys shares at the pool's value
/// per share once the air time up to now is accounted for (the completed slots, and the
/// part of the slot in progress gone by), so it pays only from now on (in a pool spent to
/// 0, a new generation at `SHARE_SCALE` shares per MIST).
public fun contribute(b: &mut Broadcast, payment: Coin<SUI>, clock: &Clock, ctx: &TxContext) {
    b.check_version();
    assert!(!b.cancelled, EBroadcastCancelled);
    let amount = payment.value();
    assert!(amount > 0, EZeroAmount);
    // Account for the air time up to now first, so new money never pays for time past.
    b.account(clock.timestamp_ms(), true);
    let pool = b.pool.value();
    if (pool == 0 && (b.total_shares > 0 || b.holders > 0)) {
        // Spent to 0 with shares left: they are worth nothing, and new money must not
        // buy into them at a price of 0 per share (a division by 0).
        b.generation = b.generation + 1;
        b.total_shares = 0;
        b.holders = 0;
        b.share_shift = 0;
    };
    let listener = ctx.sender();
    let (mut stake, counted) = b.stake_now(listener);
    let minted = if (pool == 0) {
        (amount as u256) * SHARE_SCALE
    } else {
        (amount as u256) * (b.total_shares as u256) / (pool as u256)
    };
    assert!(minted > 0, EContributionTooSmall);
    // Above 2^SHARE_BITS shares the unit doubles: every stake is rounded down to the new
    // unit when next read, and `total_shares` stays at least their sum.
    let total = (b.total_shares as u256) + minted;
    let bits = excess_bits(total);
    b.total_shares = ((total >> bits) as u128);
    b.share_shift = b.share_shift + (bits as u64);
    stake.shares = ((((stake.shares as u256) + minted) >> bits) as u128);
    stake.shift = b.share_shift;
    stake.contributed = stake.contributed + amount;
    if (!counted) {
        b.holders = b.holders + 1;
    };
    b.pool.join(payment.into_balance());
    b.total_contributed = b.total_contributed + amount;
    if (b.stakes.contains(listener)) {
        *b.stakes.borrow_mut(listener) = stake;
    } else {
        b.stakes.add(listener, stake);
    };
    event::emit(BroadcastContributed {
        broadcast: object::id(b),
        listener,
        amount,
        contribution: stake.contributed,
        pool: b.pool.value(),
        shares: stake.shares,
    });
}

/// After cancel, take back the value of the sender's shares. Returns the amount sent
/// (no coin is sent when it is 0).
public fun withdraw(b: &mut Broadcast, ctx: &mut TxContext): u64 {
    b.check_version();
    assert!(b.cancelled, ENotCancelled);
    let listener = ctx.sender();
    assert!(b.stakes.contains(listener), ENoContribution);
    b.pay_out(listener, ctx)
}

/// Leave a broadcast that is not cancelled but idle: the broadcaster has shown no sign of
/// transmitting for `idle_ms` (`EBroadcastLive` before). Completed, covered slots are
/// paid first (they are the broadcaster's); the sender takes back the value of its
/// shares. Returns the amount sent (no coin is sent when it is 0).
public fun leave(b: &mut Broadcast, clock: &Clock, ctx: &mut TxContext): u64 {
    b.check_version();
    assert!(!b.cancelled, EBroadcastCancelled);
    let listener = ctx.sender();
    assert!(b.stakes.contains(listener), ENoContribution);
    let now = clock.timestamp_ms();
    assert!(b.idle_at(now), EBroadcastLive);
    b.accrue(now);
    b.pay_out(listener, ctx)
}

// === Reading ===

/// Whether the pool covers what is left of the slot in progress at the clock's time.
public fun is_on_air(b: &Broadcast, clock: &Clock): bool {
    if (b.cancelled) return false;
    let (amount, _, _, _, accounted) = b.due(clock.timestamp_ms(), false);
    b.pool.value() - amount >= b.slot_price - b.slot_part(accounted)
}

/// Whether a listener may `leave` at the clock's time.
public fun is_idle(b: &Broadcast, clock: &Clock): bool {
    !b.cancelled && b.idle_at(clock.timestamp_ms())
}

/// How long the broadcaster may show no sign of transmitting before listeners may leave:
/// `IDLE_SLOTS` slots, at least `MIN_IDLE_MS`, at most `MAX_IDLE_MS`.
public fun idle_ms(b: &Broadcast): u64 {
    if (b.slot_ms >= MAX_IDLE_MS / IDLE_SLOTS) MAX_IDLE_MS
    else (b.slot_ms * IDLE_SLOTS).max(MIN_IDLE_MS)
}

/// What `withdraw` or `leave` would pay `listener` at the clock's time (completed,
/// covered slots paid first), whether or not it may call them now.
public fun refund_value(b: &Broadcast, listener: address, clock: &Clock): u64 {
    if (!b.stakes.contains(listener)) return 0;
    let stake = *b.stakes.borrow(listener);
    let (amount, _, _, _, _) = b.due(clock.timestamp_ms(), false);
    b.value_of(&stake, b.pool.value() - amount)
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

/// The first slot not accounted for to its end.
public fun next_slot(b: &Broadcast): u64 { b.next_slot }

/// How much of the first slot not accounted for to its end is accounted for already (ms).
public fun slot_accounted_ms(b: &Broadcast): u64 { b.slot_accounted_ms }

/// Pool value as last accounted (call `is_on_air` for the time-aware view).
public fun pool_value(b: &Broadcast): u64 { b.pool.value() }

public fun earned_value(b: &Broadcast): u64 { b.earned.value() }

public fun total_contributed(b: &Broadcast): u64 { b.total_contributed }

/// What `listener` has paid in and not taken back (0 once it withdrew or left).
public fun contribution_of(b: &Broadcast, listener: address): u64 {
    if (b.stakes.contains(listener)) b.stakes.borrow(listener).contributed else 0
}

/// `listener`'s shares of the current generation, in the current unit.
public fun shares_of(b: &Broadcast, listener: address): u128 {
    if (b.stakes.contains(listener)) b.shares_now(b.stakes.borrow(listener)) else 0
}

public fun total_shares(b: &Broadcast): u128 { b.total_shares }

public fun holders(b: &Broadcast): u64 { b.holders }

public fun generation(b: &Broadcast): u64 { b.generation }

public fun last_live_ms(b: &Broadcast): u64 { b.last_live_ms }

public fun is_cancelled(b: &Broadcast): bool { b.cancelled }

/// The ticket sale whose holders alone may listen; none for an open broadcast.
public fun ticket_sale(b: &Broadcast): Option<ID> { b.ticket_sale }

// === Testing ===

/// Overwrite `total_shares`: the states where rounding left a pool worth more than its
/// shares are reached only after the share unit has doubled many times.
#[test_only]
public fun set_total_shares_for_testing(b: &mut Broadcast, total_shares: u128) {
    b.total_shares = total_shares;
}

/// A `BroadcastSlotsPaid` event as `account` emits it, for tests to compare with.
#[test_only]
public fun slots_paid_for_testing(
    broadcast: ID,
    from_ms: u64,
    to_ms: u64,
    slots: u64,
    amount: u64,
): BroadcastSlotsPaid {
    BroadcastSlotsPaid { broadcast, from_ms, to_ms, slots, amount }
}

/// A `BroadcastSlotsSkipped` event as `account` emits it, for tests to compare with.
#[test_only]
public fun slots_skipped_for_testing(broadcast: ID, from_ms: u64, to_ms: u64): BroadcastSlotsSkipped {
    BroadcastSlotsSkipped { broadcast, from_ms, to_ms }
}

// === Internal ===

/// Start of slot `slot` (ms).
fun slot_start(b: &Broadcast, slot: u64): u64 {
    b.start_ms + slot * b.slot_ms
}

/// The price of the first `ms` of a slot, rounded down: cut anywhere, the parts of a slot
/// add up to `slot_price` exactly, and what is left of it always costs at least 1 MIST.
fun slot_part(b: &Broadcast, ms: u64): u64 {
    (((b.slot_price as u128) * (ms as u128) / (b.slot_ms as u128)) as u64)
}

/// What covers the rest of slot `next_slot` (the slot in progress, once accrued).
fun slot_rest(b: &Broadcast): u64 {
    b.slot_price - b.slot_part(b.slot_accounted_ms)
}

/// The air time to account for at `now_ms`: the rest of slot `next_slot`, then the whole
/// slots after it up to the slot in progress, each paid while the pool covers it and
/// skipped (off air) from the first it does not; with `split`, also the part of the slot
/// in progress gone by, paid pro rata if the pool covers that slot's rest. Returns (MIST
/// to pay, slots paid to their end, the end of the air time paid, and the new
/// `next_slot` and `slot_accounted_ms`). Nothing after a cancel.
fun due(b: &Broadcast, now_ms: u64, split: bool): (u64, u64, u64, u64, u64) {
    let mut slot = b.next_slot;
    let mut accounted = b.slot_accounted_ms;
    let mut paid_to = b.slot_start(slot) + accounted;
    if (b.cancelled) return (0, 0, paid_to, slot, accounted);
    let current = b.slot_at(now_ms);
    let mut pool = b.pool.value();
    let mut amount = 0;
    let mut slots = 0;
    if (current > slot) {
        let rest = b.slot_price - b.slot_part(accounted);
        if (pool >= rest) {
            pool = pool - rest;
            let whole = (current - slot - 1).min(pool / b.slot_price);
            pool = pool - whole * b.slot_price;
            slots = 1 + whole;
            amount = rest + whole * b.slot_price;
            paid_to = b.slot_start(slot + slots);
        };
        slot = current;
        accounted = 0;
    };
    let start = b.slot_start(slot);
    if (split && current == slot && now_ms > start + accounted) {
        let at = now_ms - start;
        // covered: the pool holds the slot's rest (nothing before it was skipped then)
        if (pool >= b.slot_price - b.slot_part(accounted)) {
            amount = amount + b.slot_part(at) - b.slot_part(accounted);
            paid_to = now_ms;
        };
        accounted = at;
    };
    (amount, slots, paid_to, slot, accounted)
}

/// Account for the air time up to `now_ms` (completed slots only: the slot in progress
/// is paid when it ends).
fun accrue(b: &mut Broadcast, now_ms: u64) {
    b.account(now_ms, false)
}

/// Move the pay for the air time `due` finds from the pool to the earnings, skip what the
/// pool could not cover, and tell both.
fun account(b: &mut Broadcast, now_ms: u64, split: bool) {
    let from = b.slot_start(b.next_slot) + b.slot_accounted_ms;
    let (amount, slots, paid_to, next_slot, accounted) = b.due(now_ms, split);
    if (amount > 0) {
        let pay = b.pool.split(amount);
        b.earned.join(pay);
    };
    b.paid_slots = b.paid_slots + slots;
    b.next_slot = next_slot;
    b.slot_accounted_ms = accounted;
    let to = b.slot_start(next_slot) + accounted;
    let broadcast = object::id(b);
    if (paid_to > from) {
        event::emit(BroadcastSlotsPaid { broadcast, from_ms: from, to_ms: paid_to, slots, amount });
    };
    if (to > paid_to) {
        event::emit(BroadcastSlotsSkipped { broadcast, from_ms: paid_to, to_ms: to });
    };
}

/// Whether `idle_ms` has passed at `now_ms` since the broadcaster last showed it was live.
fun idle_at(b: &Broadcast, now_ms: u64): bool {
    now_ms >= b.last_live_ms && now_ms - b.last_live_ms >= b.idle_ms()
}

/// A stake's shares in the current unit: none if of an earlier generation.
fun shares_now(b: &Broadcast, stake: &Stake): u128 {
    if (stake.generation != b.generation) return 0;
    let doublings = b.share_shift - stake.shift;
    if (doublings >= 128) 0 else stake.shares >> (doublings as u8)
}

/// `listener`'s stake brought to the current generation and unit (a new one, or one of
/// an earlier generation, holds no shares), and whether it is counted in `holders`.
fun stake_now(b: &Broadcast, listener: address): (Stake, bool) {
    if (!b.stakes.contains(listener)) {
        let stake = Stake {
            contributed: 0,
            generation: b.generation,
            shift: b.share_shift,
            shares: 0,
        };
        return (stake, false)
    };
    let mut stake = *b.stakes.borrow(listener);
    let counted = stake.generation == b.generation;
    stake.shares = b.shares_now(&stake);
    stake.generation = b.generation;
    stake.shift = b.share_shift;
    (stake, counted)
}

/// The value of `stake` out of a pool of `pool`: its shares' part rounded down, or all of
/// it for the last holder of the generation; nothing for an earlier generation.
fun value_of(b: &Broadcast, stake: &Stake, pool: u64): u64 {
    if (stake.generation != b.generation) return 0;
    if (b.holders == 1) return pool;
    let shares = b.shares_now(stake);
    if (shares == 0) return 0;
    // shares <= total_shares, so the result is at most the pool
    (((shares as u256) * (pool as u256) / (b.total_shares as u256)) as u64)
}

/// Remove `listener`'s stake and send it the value of its shares.
fun pay_out(b: &mut Broadcast, listener: address, ctx: &mut TxContext): u64 {
    let stake = b.stakes.remove(listener);
    let pool = b.pool.value();
    let amount = b.value_of(&stake, pool);
    if (stake.generation == b.generation) {
        let shares = b.shares_now(&stake);
        b.holders = b.holders - 1;
        // the last one out also takes the shares a doubling of the unit left unowned
        b.total_shares = if (b.holders == 0) 0 else b.total_shares - shares;
    };
    if (amount > 0) {
        let refund = b.pool.split(amount);
        transfer::public_transfer(coin::from_balance(refund, ctx), listener);
    };
    event::emit(ContributionRefunded { broadcast: object::id(b), listener, amount });
    amount
}

/// How many bits to drop from `total` shares to bring it below `2^SHARE_BITS`.
fun excess_bits(total: u256): u8 {
    let mut bits = 0;
    let mut rest = total >> SHARE_BITS;
    while (rest > 0) {
        rest = rest >> 1;
        bits = bits + 1;
    };
    bits
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `b` was made by or last migrated to.
public fun package_version(b: &Broadcast): u64 { b.version }

/// Abort with `version::EWrongVersion` unless `b` is of this package's version.
public(package) fun check_version(b: &Broadcast) { version::check(b.version) }

/// The admin migrates `b` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, b: &mut Broadcast) {
    b.version = version::migrate(object::id(b), b.version);
}

#[test_only]
public fun set_version_for_testing(b: &mut Broadcast, v: u64) { b.version = v; }
