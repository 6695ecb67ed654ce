/// A client's spending limit per Sui epoch.
///
/// Every connection's escrow is bound to one `SpendingCap` of its client; each payment
/// the server claims from the escrow is charged to that cap, and a claim that would push
/// the epoch's spending above the limit aborts with `ESpendingCapExceeded` (the server
/// may claim again in a later epoch: receipts are cumulative). The limit of a claim is
/// the higher of `max_per_epoch` and the value it had when the connection opened, which
/// the escrow records: lowering the cap binds the connections opened after it, and can
/// no longer void receipts the client signed on an open connection.
///
/// The cap belongs to its client: only `owner` can raise or lower the limit. It is a
/// *shared* object rather than an address-owned one because the charge happens inside
/// the server's claim transaction, which could not use an object owned by the client.
module dtp::spending_cap;

use sui::event;

#[error(code = 20)]
const ENotCapOwner: vector<u8> = b"Only the cap's owner can change it";
#[error(code = 21)]
const ESpendingCapExceeded: vector<u8> = b"Payment would exceed the client's spending cap for this epoch";

public struct SpendingCap has key {
    id: UID,
    /// The client this cap belongs to.
    owner: address,
    /// Most MIST that may be charged in one epoch.
    max_per_epoch: u64,
    /// MIST charged during `epoch`.
    spent: u64,
    /// The epoch `spent` refers to.
    epoch: u64,
}

public struct SpendingCapCreated has copy, drop {
    cap: ID,
    owner: address,
    max_per_epoch: u64,
}

public struct SpendingCapChanged has copy, drop {
    cap: ID,
    max_per_epoch: u64,
}

public struct SpendingCapCharged has copy, drop {
    cap: ID,
    epoch: u64,
    amount: u64,
    /// Spent in `epoch` after this charge.
    spent: u64,
}

/// Create and share a cap owned by the sender.
public fun create(max_per_epoch: u64, ctx: &mut TxContext): ID {
    let cap = SpendingCap {
        id: object::new(ctx),
        owner: ctx.sender(),
        max_per_epoch,
        spent: 0,
        epoch: ctx.epoch(),
    };
    let cap_id = object::id(&cap);
    event::emit(SpendingCapCreated { cap: cap_id, owner: cap.owner, max_per_epoch });
    transfer::share_object(cap);
    cap_id
}

/// Raise or lower the limit. A raise takes effect at once, also for the current epoch and
/// the connections already open; a lowering binds the connections opened after it: one
/// already open is charged against the limit it was opened under when that is higher
/// (`charge`), so that lowering the cap cannot void the receipts the client
/// signed for service it had.
public fun set_max_per_epoch(cap: &mut SpendingCap, max_per_epoch: u64, ctx: &TxContext) {
    assert!(ctx.sender() == cap.owner, ENotCapOwner);
    cap.max_per_epoch = max_per_epoch;
    event::emit(SpendingCapChanged { cap: object::id(cap), max_per_epoch });
}

/// Charge `amount` MIST to the current epoch for a connection opened when the cap's limit
/// was `opened_under` (its escrow recorded it); the count restarts from zero in a new
/// epoch. Aborts with `ESpendingCapExceeded` when the epoch's total would exceed the
/// higher of `opened_under` and `max_per_epoch`: a lowering after the open never refuses
/// the connection's claims, and the epoch's total stays bounded by the highest limit an
/// open connection was opened under.
public(package) fun charge(
    cap: &mut SpendingCap,
    amount: u64,
    opened_under: u64,
    ctx: &TxContext,
) {
    cap.roll_epoch(ctx.epoch());
    let limit = if (opened_under > cap.max_per_epoch) opened_under else cap.max_per_epoch;
    assert!(amount <= limit && cap.spent <= limit - amount, ESpendingCapExceeded);
    cap.spent = cap.spent + amount;
    event::emit(SpendingCapCharged {
        cap: object::id(cap),
        epoch: cap.epoch,
        amount,
        spent: cap.spent,
    });
}

/// Abort with `ENotCapOwner` unless `who` owns the cap.
public(package) fun assert_owner(cap: &SpendingCap, who: address) {
    assert!(cap.owner == who, ENotCapOwner);
}

/// MIST that can still be charged in the current epoch.
public fun remaining(cap: &SpendingCap, ctx: &TxContext): u64 {
    let spent = if (ctx.epoch() == cap.epoch) cap.spent else 0;
    if (spent >= cap.max_per_epoch) 0 else cap.max_per_epoch - spent
}

public fun owner(cap: &SpendingCap): address { cap.owner }

public fun max_per_epoch(cap: &SpendingCap): u64 { cap.max_per_epoch }

/// Spent in `epoch()` (which may be an earlier epoch than the current one).
public fun spent(cap: &SpendingCap): u64 { cap.spent }

public fun epoch(cap: &SpendingCap): u64 { cap.epoch }

fun roll_epoch(cap: &mut SpendingCap, now_epoch: u64) {
    if (now_epoch != cap.epoch) {
        cap.epoch = now_epoch;
        cap.spent = 0;
    }
}
