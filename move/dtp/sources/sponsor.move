/// Cost shifting: a service pays all or part of its clients' transport cost.
///
/// The host's authority creates a `SponsorPool` for one service (host, port) with a fixed
/// `share_bps` (basis points, 1..=10000: 10000 = the provider pays everything, 5000 = half)
/// and a per-connection pledge limit `max_pledge`, and funds it. The split is public
/// before a client opens: `quote(fee)` gives `(client pays, provider pays)` for any fee
/// under the service's SLA.
///
/// A client opens through `open_connection`: an ordinary connection (same SLA, deposit,
/// receipts and claims), and the pool pledges `min(deposit * share_bps / 10000,
/// max_pledge)` (rounded down) to it at once, so a provider cannot withdraw the money its
/// open connections count on, and no one connection -- however large its deposit -- locks
/// more of the pool than `max_pledge`. After settlement anyone may call `reimburse`: the
/// client receives `min(pledge, claimed * share_bps / 10000)` from the pool, and the rest
/// of the pledge is released. Top-ups are not sponsored (the pledge is fixed at open).
///
/// The pool is its `provider`'s money and pays back part of its `provider`'s fees: it
/// sponsors only connections opened while the provider is the host's authority, whose
/// fees go to it. After an authority change it sponsors no new connection
/// (`EProviderChanged`) and stays the provider's to withdraw; the pledges it made before
/// still bind it. See docs/escrow.md §14.
///
/// Conservation: the pool's `funds` only move to a client (reimburse) or to the provider
/// (withdraw), and `reserved <= funds` always.
module dtp::sponsor;

use dtp::escrow::Escrow;
use dtp::host::Host;
use dtp::spending_cap::SpendingCap;
use dtp::transport_control::{Self, TransportControl};
use sui::balance::{Self, Balance};
use sui::clock::Clock;
use sui::coin::{Self, Coin};
use sui::event;
use sui::sui::SUI;
use sui::table::{Self, Table};

// === Errors ===

#[error(code = 200)]
const ENotProvider: vector<u8> = b"Only the pool's provider (the host's authority) can do this";
#[error(code = 201)]
const EInvalidShare: vector<u8> = b"Share must be between 1 and 10000 basis points";
#[error(code = 202)]
const ESponsorUnfunded: vector<u8> = b"The sponsor pool has too little unpledged money";
#[error(code = 203)]
const EWrongHost: vector<u8> = b"Not the pool's host";
#[error(code = 204)]
const ENotSettled: vector<u8> = b"The connection is not settled yet";
#[error(code = 205)]
const EAlreadyReimbursed: vector<u8> = b"The connection was already reimbursed";
#[error(code = 206)]
const ENotSponsored: vector<u8> = b"The connection was not opened through this pool";
#[error(code = 207)]
const EZeroAmount: vector<u8> = b"Amount must be positive";
#[error(code = 208)]
const EWrongEscrow: vector<u8> = b"Not this connection's escrow";
#[error(code = 209)]
const EProviderChanged: vector<u8> = b"The host's authority is no longer the pool's provider: it sponsors no new connections";

// === Constants ===

/// 100% in basis points.
const BPS: u64 = 10_000;

// === Objects ===

/// What the pool pledged to one connection, and whether it was paid out.
public struct Pledge has copy, drop, store {
    amount: u64,
    reimbursed: bool,
}

public struct SponsorPool has key {
    id: UID,
    host: ID,
    port: u16,
    provider: address,
    /// The provider's share of every sponsored connection's fees, in basis points.
    share_bps: u64,
    /// The most the pool pledges to one connection (0: it sponsors nothing new).
    max_pledge: u64,
    funds: Balance<SUI>,
    /// Part of `funds` pledged to connections not yet reimbursed.
    reserved: u64,
    pledges: Table<ID, Pledge>,
}

// === Events ===

public struct SponsorPoolCreated has copy, drop {
    pool: ID,
    host: ID,
    port: u16,
    provider: address,
    share_bps: u64,
    max_pledge: u64,
}

public struct SponsorPledgeLimitChanged has copy, drop {
    pool: ID,
    max_pledge: u64,
}

public struct SponsorPoolFunded has copy, drop {
    pool: ID,
    amount: u64,
    funds: u64,
}

public struct SponsorPoolWithdrawn has copy, drop {
    pool: ID,
    amount: u64,
    funds: u64,
}

public struct SponsoredConnectionOpened has copy, drop {
    pool: ID,
    connection: ID,
    pledge: u64,
    share_bps: u64,
}

public struct SponsorReimbursed has copy, drop {
    pool: ID,
    connection: ID,
    client: address,
    claimed: u64,
    amount: u64,
}

// === Provider ===

/// Create a pool for the service `port` of `host`, pledging at most `max_pledge` to one
/// connection. Checks: sender is the authority (`ENotProvider`), the service exists
/// (`host::EServiceNotFound`), `1 <= share_bps <= 10000` (`EInvalidShare`). Returns the
/// pool's ID.
public fun create(
    host: &Host,
    port: u16,
    share_bps: u64,
    max_pledge: u64,
    ctx: &mut TxContext,
): ID {
    assert!(ctx.sender() == host.authority(), ENotProvider);
    let _ = host.service(port);
    assert!(share_bps > 0 && share_bps <= BPS, EInvalidShare);
    let pool = SponsorPool {
        id: object::new(ctx),
        host: object::id(host),
        port,
        provider: ctx.sender(),
        share_bps,
        max_pledge,
        funds: balance::zero(),
        reserved: 0,
        pledges: table::new(ctx),
    };
    let pool_id = object::id(&pool);
    event::emit(SponsorPoolCreated {
        pool: pool_id,
        host: pool.host,
        port,
        provider: pool.provider,
        share_bps,
        max_pledge,
    });
    transfer::share_object(pool);
    pool_id
}

/// Add money to the pool (anyone may). Checks: amount > 0 (`EZeroAmount`).
public fun fund(pool: &mut SponsorPool, payment: Coin<SUI>) {
    let amount = payment.value();
    assert!(amount > 0, EZeroAmount);
    pool.funds.join(payment.into_balance());
    event::emit(SponsorPoolFunded { pool: object::id(pool), amount, funds: pool.funds.value() });
}

/// The provider takes back unpledged money. Checks: provider (`ENotProvider`), amount > 0
/// (`EZeroAmount`), `amount <= funds - reserved` (`ESponsorUnfunded`).
public fun withdraw(pool: &mut SponsorPool, amount: u64, ctx: &mut TxContext) {
    assert!(ctx.sender() == pool.provider, ENotProvider);
    assert!(amount > 0, EZeroAmount);
    assert!(amount <= pool.funds.value() - pool.reserved, ESponsorUnfunded);
    let part = pool.funds.split(amount);
    transfer::public_transfer(coin::from_balance(part, ctx), pool.provider);
    event::emit(SponsorPoolWithdrawn { pool: object::id(pool), amount, funds: pool.funds.value() });
}

/// The provider sets the most the pool pledges to one connection opened from now on
/// (pledges made stay as they are; 0 pauses the sponsoring). Checks: provider
/// (`ENotProvider`).
public fun set_max_pledge(pool: &mut SponsorPool, max_pledge: u64, ctx: &TxContext) {
    assert!(ctx.sender() == pool.provider, ENotProvider);
    pool.max_pledge = max_pledge;
    event::emit(SponsorPledgeLimitChanged { pool: object::id(pool), max_pledge });
}

// === Client ===

/// Open a sponsored connection to the pool's service. Checks, before those of
/// `transport_control::open`: the pool's host (`EWrongHost`), its authority is still the
/// pool's provider (`EProviderChanged`), the pool can pledge `min(deposit * share_bps /
/// 10000, max_pledge)` (`ESponsorUnfunded`). Returns the connection ID.
public fun open_connection(
    pool: &mut SponsorPool,
    host: &Host,
    cap: &mut SpendingCap,
    client_public_key: vector<u8>,
    deposit: Coin<SUI>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    assert!(object::id(host) == pool.host, EWrongHost);
    // the connection's fees go to the authority now: only its own pool pays them back
    assert!(host.authority() == pool.provider, EProviderChanged);
    let pledge = pool.pledge_for(deposit.value());
    assert!(pledge <= pool.funds.value() - pool.reserved, ESponsorUnfunded);
    let connection = transport_control::open(
        host,
        pool.port,
        cap,
        client_public_key,
        deposit,
        clock,
        ctx,
    );
    pool.pledges.add(connection, Pledge { amount: pledge, reimbursed: false });
    pool.reserved = pool.reserved + pledge;
    event::emit(SponsoredConnectionOpened {
        pool: object::id(pool),
        connection,
        pledge,
        share_bps: pool.share_bps,
    });
    connection
}

/// Pay the client the provider's share of a settled sponsored connection. Anyone may
/// call it (the money goes to the client). Checks: the connection was opened through this
/// pool (`ENotSponsored`), not reimbursed before (`EAlreadyReimbursed`), the connection's
/// escrow (`EWrongEscrow`), settled (`ENotSettled`). Returns the amount.
public fun reimburse(
    pool: &mut SponsorPool,
    tc: &TransportControl,
    escrow: &Escrow,
    ctx: &mut TxContext,
): u64 {
    let connection = tc.connection_id();
    assert!(pool.pledges.contains(connection), ENotSponsored);
    let pledge = *pool.pledges.borrow(connection);
    assert!(!pledge.reimbursed, EAlreadyReimbursed);
    assert!(object::id(escrow) == tc.escrow_id(), EWrongEscrow);
    assert!(tc.is_settled(), ENotSettled);
    let share = pool.share_of(escrow.claimed());
    let amount = if (share < pledge.amount) share else pledge.amount;
    pool.reserved = pool.reserved - pledge.amount;
    *pool.pledges.borrow_mut(connection) = Pledge { amount: pledge.amount, reimbursed: true };
    let client = tc.client();
    if (amount > 0) {
        let part = pool.funds.split(amount);
        transfer::public_transfer(coin::from_balance(part, ctx), client);
    };
    event::emit(SponsorReimbursed {
        pool: object::id(pool),
        connection,
        client,
        claimed: escrow.claimed(),
        amount,
    });
    amount
}

// === Reading ===

/// The split of `fee` before opening: (what the client bears, what the provider pays).
public fun quote(pool: &SponsorPool, fee: u64): (u64, u64) {
    let provider_part = pool.share_of(fee);
    (fee - provider_part, provider_part)
}

public fun share_bps(pool: &SponsorPool): u64 { pool.share_bps }

public fun funds_value(pool: &SponsorPool): u64 { pool.funds.value() }

public fun reserved(pool: &SponsorPool): u64 { pool.reserved }

public fun available(pool: &SponsorPool): u64 { pool.funds.value() - pool.reserved }

public fun provider(pool: &SponsorPool): address { pool.provider }

public fun max_pledge(pool: &SponsorPool): u64 { pool.max_pledge }

/// The pledge a connection opened now with `deposit` would get.
public fun pledge_for(pool: &SponsorPool, deposit: u64): u64 {
    pool.share_of(deposit).min(pool.max_pledge)
}

public fun host_id(pool: &SponsorPool): ID { pool.host }

public fun port(pool: &SponsorPool): u16 { pool.port }

public fun pledge_of(pool: &SponsorPool, connection: ID): u64 {
    if (pool.pledges.contains(connection)) pool.pledges.borrow(connection).amount else 0
}

// === Internal ===

fun share_of(pool: &SponsorPool, amount: u64): u64 {
    (((amount as u128) * (pool.share_bps as u128) / (BPS as u128)) as u64)
}
