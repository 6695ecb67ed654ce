/// A client's spending limit per Sui epoch.
///
/// Every connection's escrow is bound to one `SpendingCap` of its client. Opening a
/// connection *reserves* its whole deposit on the cap, and so does a top-up: a reservation
/// that would push the epoch's total above `max_per_epoch` aborts with
/// `ESpendingCapExceeded`, so the connection is not opened (or the top-up not made). The
/// server's claims then charge nothing: what they can take was reserved before the
/// client was served, and no later spending of the client elsewhere can make them fail.
/// Settlement gives back the part of the reservation that was refunded, while the epoch
/// it was made in lasts (a reservation of an earlier epoch has already been forgotten by
/// the epoch's reset). See docs/escrow.md §4.
///
/// The cap belongs to its client: only `owner` can raise or lower the limit. It is a
/// *shared* object rather than an address-owned one because settlement, which the
/// server may send, releases what its connection reserved: a transaction can only use
/// objects owned by its sender.
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
    /// Most MIST that may be reserved in one epoch.
    max_per_epoch: u64,
    /// MIST reserved during `epoch` and not released.
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

public struct SpendingCapReserved has copy, drop {
    cap: ID,
    epoch: u64,
    amount: u64,
    /// Spent in `epoch` after this reservation.
    spent: u64,
}

public struct SpendingCapReleased has copy, drop {
    cap: ID,
    epoch: u64,
    amount: u64,
    /// Spent in `epoch` after this release.
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

/// Raise or lower the limit; it applies to the reservations made from now on (opens and
/// top-ups). What is already reserved stays reserved: the deposits of open connections
/// remain claimable whatever the limit becomes.
public fun set_max_per_epoch(cap: &mut SpendingCap, max_per_epoch: u64, ctx: &TxContext) {
    assert!(ctx.sender() == cap.owner, ENotCapOwner);
    cap.max_per_epoch = max_per_epoch;
    event::emit(SpendingCapChanged { cap: object::id(cap), max_per_epoch });
}

/// Reserve `amount` MIST in the current epoch (the count restarts from zero in a new
/// epoch). Aborts with `ESpendingCapExceeded` when the epoch's total would exceed
/// `max_per_epoch` -- a reservation of 0 included, once a lowering left the epoch's
/// total above the limit.
public(package) fun reserve(cap: &mut SpendingCap, amount: u64, ctx: &TxContext) {
    cap.roll_epoch(ctx.epoch());
    assert!(
        amount <= cap.max_per_epoch && cap.spent <= cap.max_per_epoch - amount,
        ESpendingCapExceeded,
    );
    cap.spent = cap.spent + amount;
    event::emit(SpendingCapReserved {
        cap: object::id(cap),
        epoch: cap.epoch,
        amount,
        spent: cap.spent,
    });
}

/// Give back up to `amount` MIST reserved in `reserved_epoch`, if that is still the
/// current epoch (a new epoch has already reset the count). Returns what was released
/// (an event is emitted when it is not 0).
public(package) fun release(
    cap: &mut SpendingCap,
    amount: u64,
    reserved_epoch: u64,
    ctx: &TxContext,
): u64 {
    cap.roll_epoch(ctx.epoch());
    if (cap.epoch != reserved_epoch) return 0;
    let released = amount.min(cap.spent);
    if (released > 0) {
        cap.spent = cap.spent - released;
        event::emit(SpendingCapReleased {
            cap: object::id(cap),
            epoch: cap.epoch,
            amount: released,
            spent: cap.spent,
        });
    };
    released
}

/// Abort with `ENotCapOwner` unless `who` owns the cap.
public(package) fun assert_owner(cap: &SpendingCap, who: address) {
    assert!(cap.owner == who, ENotCapOwner);
}

/// MIST that can still be reserved in the current epoch.
public fun remaining(cap: &SpendingCap, ctx: &TxContext): u64 {
    let spent = if (ctx.epoch() == cap.epoch) cap.spent else 0;
    if (spent >= cap.max_per_epoch) 0 else cap.max_per_epoch - spent
}

public fun owner(cap: &SpendingCap): address { cap.owner }

public fun max_per_epoch(cap: &SpendingCap): u64 { cap.max_per_epoch }

/// Reserved in `epoch()` (which may be an earlier epoch than the current one).
public fun spent(cap: &SpendingCap): u64 { cap.spent }

public fun epoch(cap: &SpendingCap): u64 { cap.epoch }

fun roll_epoch(cap: &mut SpendingCap, now_epoch: u64) {
    if (now_epoch != cap.epoch) {
        cap.epoch = now_epoch;
        cap.spent = 0;
    }
}
