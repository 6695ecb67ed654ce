/// A client's spending limit per Sui epoch.
///
/// Every connection's escrow is bound to one `SpendingCap` of its client. The cap counts
/// two things: `outstanding`, the deposits and top-ups paid in and not yet claimed or
/// refunded, whatever epoch they were paid in; and `claimed`, the claims the cap has
/// counted in the current `epoch`. An open or a top-up of `amount` needs
/// `claimed + outstanding + amount <= max_per_epoch`, else it aborts with
/// `ESpendingCapExceeded` and nothing moves. A claim never aborts because of the cap: it
/// takes money already counted in `outstanding`, and the escrow reports it to the cap at
/// its next top-up or its settlement (`count_claims`), which moves it from `outstanding`
/// to `claimed` (a claim of an earlier epoch leaves the count: that epoch is over).
/// Settlement releases the refund from `outstanding`. A new epoch resets `claimed` only.
///
/// So nothing raises `claimed + outstanding` except a reservation, which is checked
/// against the limit, and every MIST a server claims in an epoch sits in that sum until
/// the epoch ends: no epoch's claims exceed the limit in force at the latest reservation.
/// A reservation of 0 (a subscribed open, an empty top-up) always succeeds, and lowering
/// the limit binds only the reservations made afterwards. See docs/escrow.md §4.
///
/// The cap belongs to its client: only `owner` can raise or lower the limit. It is a
/// *shared* object rather than an address-owned one because settlement, which the
/// server may send, releases what its connection reserved: a transaction can only use
/// objects owned by its sender.
module dtp::spending_cap;

use dtp::version::{Self, AdminCap};
use sui::event;

#[error(code = 20)]
const ENotCapOwner: vector<u8> = b"Only the cap's owner can change it";
#[error(code = 21)]
const ESpendingCapExceeded: vector<u8> = b"Payment would exceed the client's spending cap for this epoch";

public struct SpendingCap has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    /// The client this cap belongs to.
    owner: address,
    /// Most MIST that may be claimed in one epoch, counting every deposit not yet
    /// claimed or refunded as claimable in it.
    max_per_epoch: u64,
    /// Claims counted during `epoch`.
    claimed: u64,
    /// Deposits and top-ups paid in and not yet counted as claimed or released, of any
    /// epoch.
    outstanding: u64,
    /// The epoch `claimed` refers to.
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
    /// The cap's counts after this reservation.
    claimed: u64,
    outstanding: u64,
}

public struct SpendingCapClaimsCounted has copy, drop {
    cap: ID,
    epoch: u64,
    /// Claims taken off `outstanding` (made since their escrow last reported).
    amount: u64,
    /// The part of `amount` claimed in `epoch`, added to `claimed`.
    in_epoch: u64,
    claimed: u64,
    outstanding: u64,
}

public struct SpendingCapReleased has copy, drop {
    cap: ID,
    epoch: u64,
    amount: u64,
    claimed: u64,
    outstanding: u64,
}

/// Create and share a cap owned by the sender.
public fun create(max_per_epoch: u64, ctx: &mut TxContext): ID {
    let cap = SpendingCap {
        id: object::new(ctx),
        version: version::current(),
        owner: ctx.sender(),
        max_per_epoch,
        claimed: 0,
        outstanding: 0,
        epoch: ctx.epoch(),
    };
    let cap_id = object::id(&cap);
    event::emit(SpendingCapCreated { cap: cap_id, owner: cap.owner, max_per_epoch });
    transfer::share_object(cap);
    cap_id
}

/// Raise or lower the limit; it binds the reservations made from now on (opens and
/// top-ups of more than 0). What is outstanding stays claimable whatever the limit
/// becomes: no claim and no reservation of 0 is ever refused for it.
public fun set_max_per_epoch(cap: &mut SpendingCap, max_per_epoch: u64, ctx: &TxContext) {
    cap.check_version();
    assert!(ctx.sender() == cap.owner, ENotCapOwner);
    cap.max_per_epoch = max_per_epoch;
    event::emit(SpendingCapChanged { cap: object::id(cap), max_per_epoch });
}

/// Reserve `amount` MIST paid into an escrow: it becomes `outstanding`. Aborts with
/// `ESpendingCapExceeded` when `claimed + outstanding + amount` would exceed
/// `max_per_epoch`; a reservation of 0 is never refused.
public(package) fun reserve(cap: &mut SpendingCap, amount: u64, ctx: &TxContext) {
    cap.roll_epoch(ctx.epoch());
    assert!(
        amount == 0 || cap.used() + (amount as u128) <= (cap.max_per_epoch as u128),
        ESpendingCapExceeded,
    );
    cap.outstanding = cap.outstanding + amount;
    event::emit(SpendingCapReserved {
        cap: object::id(cap),
        epoch: cap.epoch,
        amount,
        claimed: cap.claimed,
        outstanding: cap.outstanding,
    });
}

/// An escrow reports `amount` MIST claimed from it since its last report, of which
/// `in_epoch` were claimed in `claim_epoch`: the amount leaves `outstanding`, and the
/// part claimed in the current epoch joins `claimed` (a claim of an earlier epoch was
/// within that epoch's count while it lasted). Never aborts.
public(package) fun count_claims(
    cap: &mut SpendingCap,
    amount: u64,
    claim_epoch: u64,
    in_epoch: u64,
    ctx: &TxContext,
) {
    cap.roll_epoch(ctx.epoch());
    if (amount == 0) return;
    let taken = amount.min(cap.outstanding);
    cap.outstanding = cap.outstanding - taken;
    let counted = if (claim_epoch == cap.epoch) taken.min(in_epoch) else 0;
    cap.claimed = cap.claimed + counted;
    event::emit(SpendingCapClaimsCounted {
        cap: object::id(cap),
        epoch: cap.epoch,
        amount: taken,
        in_epoch: counted,
        claimed: cap.claimed,
        outstanding: cap.outstanding,
    });
}

/// Give back up to `amount` MIST of `outstanding` (a settlement's refund). Returns what
/// was released (an event is emitted when it is not 0). Never aborts.
public(package) fun release(cap: &mut SpendingCap, amount: u64, ctx: &TxContext): u64 {
    cap.roll_epoch(ctx.epoch());
    let released = amount.min(cap.outstanding);
    if (released > 0) {
        cap.outstanding = cap.outstanding - released;
        event::emit(SpendingCapReleased {
            cap: object::id(cap),
            epoch: cap.epoch,
            amount: released,
            claimed: cap.claimed,
            outstanding: cap.outstanding,
        });
    };
    released
}

/// Abort with `ENotCapOwner` unless `who` owns the cap.
public(package) fun assert_owner(cap: &SpendingCap, who: address) {
    assert!(cap.owner == who, ENotCapOwner);
}

/// MIST that an open or a top-up may still reserve in the current epoch: the limit less
/// this epoch's counted claims and what is outstanding (0 when they reach it).
public fun remaining(cap: &SpendingCap, ctx: &TxContext): u64 {
    let claimed = if (ctx.epoch() == cap.epoch) cap.claimed else 0;
    let used = (claimed as u128) + (cap.outstanding as u128);
    let max = cap.max_per_epoch as u128;
    if (used >= max) 0 else ((max - used) as u64)
}

public fun owner(cap: &SpendingCap): address { cap.owner }

public fun max_per_epoch(cap: &SpendingCap): u64 { cap.max_per_epoch }

/// Claims counted in `epoch()` (which may be an earlier epoch than the current one).
public fun claimed(cap: &SpendingCap): u64 { cap.claimed }

/// Deposits paid in and not yet counted as claimed or released.
public fun outstanding(cap: &SpendingCap): u64 { cap.outstanding }

public fun epoch(cap: &SpendingCap): u64 { cap.epoch }

fun used(cap: &SpendingCap): u128 { (cap.claimed as u128) + (cap.outstanding as u128) }

fun roll_epoch(cap: &mut SpendingCap, now_epoch: u64) {
    if (now_epoch != cap.epoch) {
        cap.epoch = now_epoch;
        cap.claimed = 0;
    }
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `cap` was made by or last migrated to.
public fun package_version(cap: &SpendingCap): u64 { cap.version }

/// Abort with `version::EWrongVersion` unless `cap` is of this package's version.
public(package) fun check_version(cap: &SpendingCap) { version::check(cap.version) }

/// The admin migrates `cap` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, cap: &mut SpendingCap) {
    cap.version = version::migrate(object::id(cap), cap.version);
}

#[test_only]
public fun set_version_for_testing(cap: &mut SpendingCap, v: u64) { cap.version = v; }
