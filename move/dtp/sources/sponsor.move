/// Cost shifting: a service pays all or part of its clients' transport cost.
///
/// The host's authority creates a `SponsorPool` for one service (host, port) with a fixed
/// `share_bps` (basis points, 1..=10000: 10000 = the provider pays everything, 5000 = half)
/// and a per-connection pledge limit `max_pledge`. The split is public before a client
/// opens: `quote(fee)` gives `(client pays, provider pays)` for any fee under the
/// service's SLA.
///
/// The pool's money is held in its `SponsorLane`s, made with it (1..=`MAX_LANES`, fixed):
/// each lane has its own `funds`, `reserved` and pledges, and a client opens through the
/// lane it picks. So a sponsored open writes one lane and only reads the pool: the opens
/// and reimbursements of clients on different lanes are not ordered with each other on
/// Sui, as plain opens of one host are not (docs/escrow.md §19).
///
/// A client opens through `open_connection`: an ordinary connection (same SLA, deposit,
/// receipts and claims), and the lane pledges `min(deposit * share_bps / 10000,
/// max_pledge)` (rounded down) to it at once, from its own unpledged money, so a provider
/// cannot withdraw the money its open connections count on, and no one connection --
/// however large its deposit -- locks more than `max_pledge`. After settlement anyone may
/// call `reimburse` with that lane: the client receives `min(pledge, claimed * share_bps /
/// 10000)` from it, the rest of the pledge is released, and the pledge's record is
/// removed (its storage rebate goes to the sender). Top-ups are not sponsored (the pledge
/// is fixed at open). The connection records its lane, and its client deletes it through
/// `reimburse_and_destroy` alone, which reimburses it first if no one has: a deleted
/// connection never leaves its pledge reserved.
///
/// The pool is its `provider`'s money and pays back part of its `provider`'s fees: it
/// sponsors only connections opened while the provider is the host's authority, whose
/// fees go to it. After an authority change it sponsors no new connection
/// (`EProviderChanged`) and stays the provider's to withdraw; the pledges it made before
/// still bind it. See docs/escrow.md §14.
///
/// Conservation: a lane's `funds` only move to a client (reimburse) or to the provider
/// (withdraw), and in every lane `reserved == the sum of its pledges <= funds`.
module dtp::sponsor;

use dtp::escrow::Escrow;
use dtp::host::Host;
use dtp::spending_cap::SpendingCap;
use dtp::transport_control::{Self, TransportControl};
use dtp::version::{Self, AdminCap};
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
const ESponsorUnfunded: vector<u8> = b"The sponsor lane has too little unpledged money";
#[error(code = 203)]
const EWrongHost: vector<u8> = b"Not the pool's host";
#[error(code = 204)]
const ENotSettled: vector<u8> = b"The connection is not settled yet";
#[error(code = 206)]
const ENotSponsored: vector<u8> = b"The lane holds no pledge for the connection (not opened through it, or reimbursed)";
#[error(code = 207)]
const EZeroAmount: vector<u8> = b"Amount must be positive";
#[error(code = 208)]
const EWrongEscrow: vector<u8> = b"Not this connection's escrow";
#[error(code = 209)]
const EProviderChanged: vector<u8> = b"The host's authority is no longer the pool's provider: it sponsors no new connections";
#[error(code = 250)]
const EWrongLane: vector<u8> = b"Not a lane of this pool";
#[error(code = 251)]
const EInvalidLanes: vector<u8> = b"A pool has between 1 and 64 lanes";

// === Constants ===

/// 100% in basis points.
const BPS: u64 = 10_000;
/// The most lanes one pool has.
const MAX_LANES: u64 = 64;

// === Objects ===

/// A service's sponsoring terms. Sponsored opens and reimbursements only read it; only
/// `set_max_pledge` writes it.
public struct SponsorPool has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    host: ID,
    port: u16,
    provider: address,
    /// The provider's share of every sponsored connection's fees, in basis points.
    share_bps: u64,
    /// The most a lane pledges to one connection (0: it sponsors nothing new).
    max_pledge: u64,
    /// The pool's lanes, made with it: the money is theirs.
    lanes: vector<ID>,
}

/// One part of a pool's money, and the pledges made from it.
public struct SponsorLane has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    pool: ID,
    funds: Balance<SUI>,
    /// Part of `funds` pledged to connections not yet reimbursed: the sum of `pledges`.
    reserved: u64,
    /// Connection -> what this lane pledged to it; removed when it is reimbursed.
    pledges: Table<ID, u64>,
}

// === Events ===

public struct SponsorPoolCreated has copy, drop {
    pool: ID,
    host: ID,
    port: u16,
    provider: address,
    share_bps: u64,
    max_pledge: u64,
    lanes: vector<ID>,
}

public struct SponsorPledgeLimitChanged has copy, drop {
    pool: ID,
    max_pledge: u64,
}

public struct SponsorPoolFunded has copy, drop {
    pool: ID,
    lane: ID,
    amount: u64,
    /// The lane's funds after.
    funds: u64,
}

public struct SponsorPoolWithdrawn has copy, drop {
    pool: ID,
    lane: ID,
    amount: u64,
    /// The lane's funds after.
    funds: u64,
}

public struct SponsoredConnectionOpened has copy, drop {
    pool: ID,
    lane: ID,
    connection: ID,
    pledge: u64,
    share_bps: u64,
}

public struct SponsorReimbursed has copy, drop {
    pool: ID,
    lane: ID,
    connection: ID,
    client: address,
    claimed: u64,
    amount: u64,
}

// === Provider ===

/// Create a pool for the service `port` of `host` with `lanes` lanes, pledging at most
/// `max_pledge` to one connection. Checks: sender is the authority (`ENotProvider`), the
/// service exists (`host::EServiceNotFound`), `1 <= share_bps <= 10000` (`EInvalidShare`),
/// `1 <= lanes <= 64` (`EInvalidLanes`). Returns the pool's ID.
public fun create(
    host: &Host,
    port: u16,
    share_bps: u64,
    max_pledge: u64,
    lanes: u64,
    ctx: &mut TxContext,
): ID {
    host.check_version();
    assert!(ctx.sender() == host.authority(), ENotProvider);
    let _ = host.service(port);
    assert!(share_bps > 0 && share_bps <= BPS, EInvalidShare);
    assert!(lanes > 0 && lanes <= MAX_LANES, EInvalidLanes);
    let id = object::new(ctx);
    let pool_id = id.to_inner();
    let mut lane_ids = vector[];
    let mut i = 0;
    while (i < lanes) {
        let lane = SponsorLane {
            id: object::new(ctx),
            version: version::current(),
            pool: pool_id,
            funds: balance::zero(),
            reserved: 0,
            pledges: table::new(ctx),
        };
        lane_ids.push_back(object::id(&lane));
        transfer::share_object(lane);
        i = i + 1;
    };
    let pool = SponsorPool {
        id,
        version: version::current(),
        host: object::id(host),
        port,
        provider: ctx.sender(),
        share_bps,
        max_pledge,
        lanes: lane_ids,
    };
    event::emit(SponsorPoolCreated {
        pool: pool_id,
        host: pool.host,
        port,
        provider: pool.provider,
        share_bps,
        max_pledge,
        lanes: pool.lanes,
    });
    transfer::share_object(pool);
    pool_id
}

/// Add money to a lane of the pool (anyone may). Checks: a lane of the pool
/// (`EWrongLane`), amount > 0 (`EZeroAmount`).
public fun fund(pool: &SponsorPool, lane: &mut SponsorLane, payment: Coin<SUI>) {
    pool.check_pool_version();
    lane.check_lane_version();
    assert!(lane.pool == object::id(pool), EWrongLane);
    let amount = payment.value();
    assert!(amount > 0, EZeroAmount);
    lane.funds.join(payment.into_balance());
    event::emit(SponsorPoolFunded {
        pool: lane.pool,
        lane: object::id(lane),
        amount,
        funds: lane.funds.value(),
    });
}

/// The provider takes back a lane's unpledged money. Checks: a lane of the pool
/// (`EWrongLane`), provider (`ENotProvider`), amount > 0 (`EZeroAmount`), `amount <=
/// funds - reserved` of the lane (`ESponsorUnfunded`).
public fun withdraw(
    pool: &SponsorPool,
    lane: &mut SponsorLane,
    amount: u64,
    ctx: &mut TxContext,
) {
    pool.check_pool_version();
    lane.check_lane_version();
    assert!(lane.pool == object::id(pool), EWrongLane);
    assert!(ctx.sender() == pool.provider, ENotProvider);
    assert!(amount > 0, EZeroAmount);
    assert!(amount <= lane.funds.value() - lane.reserved, ESponsorUnfunded);
    let part = lane.funds.split(amount);
    transfer::public_transfer(coin::from_balance(part, ctx), pool.provider);
    event::emit(SponsorPoolWithdrawn {
        pool: lane.pool,
        lane: object::id(lane),
        amount,
        funds: lane.funds.value(),
    });
}

/// The provider sets the most a lane pledges to one connection opened from now on
/// (pledges made stay as they are; 0 pauses the sponsoring). Checks: provider
/// (`ENotProvider`).
public fun set_max_pledge(pool: &mut SponsorPool, max_pledge: u64, ctx: &TxContext) {
    pool.check_pool_version();
    assert!(ctx.sender() == pool.provider, ENotProvider);
    pool.max_pledge = max_pledge;
    event::emit(SponsorPledgeLimitChanged { pool: object::id(pool), max_pledge });
}

// === Client ===

/// Open a sponsored connection to the pool's service through `lane`. Checks, before those
/// of `transport_control::open`: a lane of the pool (`EWrongLane`), the pool's host
/// (`EWrongHost`), its authority is still the pool's provider (`EProviderChanged`), the
/// lane can pledge `min(deposit * share_bps / 10000, max_pledge)` (`ESponsorUnfunded`).
/// Returns the connection ID.
public fun open_connection(
    pool: &SponsorPool,
    lane: &mut SponsorLane,
    host: &Host,
    cap: &mut SpendingCap,
    client_public_key: vector<u8>,
    deposit: Coin<SUI>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    pool.check_pool_version();
    lane.check_lane_version();
    host.check_version();
    cap.check_version();
    assert!(lane.pool == object::id(pool), EWrongLane);
    assert!(object::id(host) == pool.host, EWrongHost);
    // the connection's fees go to the authority now: only its own pool pays them back
    assert!(host.authority() == pool.provider, EProviderChanged);
    let pledge = pool.pledge_for(deposit.value());
    assert!(pledge <= lane.funds.value() - lane.reserved, ESponsorUnfunded);
    let connection = transport_control::open_sponsored(
        host,
        pool.port,
        cap,
        client_public_key,
        deposit,
        object::id(lane),
        clock,
        ctx,
    );
    lane.pledges.add(connection, pledge);
    lane.reserved = lane.reserved + pledge;
    event::emit(SponsoredConnectionOpened {
        pool: lane.pool,
        lane: object::id(lane),
        connection,
        pledge,
        share_bps: pool.share_bps,
    });
    connection
}

/// Pay the client the provider's share of a settled sponsored connection, from the lane
/// that pledged to it, and remove the pledge. Anyone may call it (the money goes to the
/// client). Checks: a lane of the pool (`EWrongLane`), the lane holds a pledge for the
/// connection (`ENotSponsored`: never opened through it, or reimbursed already), the
/// connection's escrow (`EWrongEscrow`), settled (`ENotSettled`). Returns the amount.
public fun reimburse(
    pool: &SponsorPool,
    lane: &mut SponsorLane,
    tc: &TransportControl,
    escrow: &Escrow,
    ctx: &mut TxContext,
): u64 {
    pool.check_pool_version();
    lane.check_lane_version();
    tc.check_version();
    escrow.check_version();
    assert!(lane.pool == object::id(pool), EWrongLane);
    assert!(lane.pledges.contains(tc.connection_id()), ENotSponsored);
    assert!(object::id(escrow) == tc.escrow_id(), EWrongEscrow);
    assert!(tc.is_settled(), ENotSettled);
    lane.pay_pledge(pool, tc, escrow, ctx)
}

/// The client deletes its settled sponsored connection (the TransportControl and its
/// Escrow, as `transport_control::destroy` deletes any other, which refuses this one), its
/// pledge reimbursed first if the lane still holds it (as `reimburse`; someone may have
/// called that already, and then it is only deleted). So a deletion never leaves a
/// pledge reserved in the lane for good. Checks: a lane of the pool (`EWrongLane`), the
/// lane the connection was opened through (`ENotSponsored`), then those of
/// `transport_control::destroy`: the sender is the client (`transport_control::
/// ENotClient`), settled (`transport_control::ENotSettled`), the connection's escrow
/// (`transport_control::EWrongEscrow`). Returns the amount reimbursed (0 when the pledge
/// was released before).
public fun reimburse_and_destroy(
    pool: &SponsorPool,
    lane: &mut SponsorLane,
    tc: TransportControl,
    escrow: Escrow,
    ctx: &mut TxContext,
): u64 {
    pool.check_pool_version();
    lane.check_lane_version();
    tc.check_version();
    escrow.check_version();
    assert!(lane.pool == object::id(pool), EWrongLane);
    assert!(tc.sponsor() == option::some(object::id(lane)), ENotSponsored);
    tc.assert_deletable(&escrow, ctx);
    let amount = if (lane.pledges.contains(tc.connection_id())) {
        lane.pay_pledge(pool, &tc, &escrow, ctx)
    } else 0;
    tc.delete(escrow);
    amount
}

// === Reading ===

/// The split of `fee` before opening: (what the client bears, what the provider pays).
public fun quote(pool: &SponsorPool, fee: u64): (u64, u64) {
    let provider_part = pool.share_of(fee);
    (fee - provider_part, provider_part)
}

public fun share_bps(pool: &SponsorPool): u64 { pool.share_bps }

public fun provider(pool: &SponsorPool): address { pool.provider }

public fun max_pledge(pool: &SponsorPool): u64 { pool.max_pledge }

/// The pledge a connection opened now with `deposit` would get.
public fun pledge_for(pool: &SponsorPool, deposit: u64): u64 {
    pool.share_of(deposit).min(pool.max_pledge)
}

public fun host_id(pool: &SponsorPool): ID { pool.host }

public fun port(pool: &SponsorPool): u16 { pool.port }

/// The pool's lanes, in the order they were made.
public fun lanes(pool: &SponsorPool): vector<ID> { pool.lanes }

public fun lane_pool(lane: &SponsorLane): ID { lane.pool }

public fun funds_value(lane: &SponsorLane): u64 { lane.funds.value() }

public fun reserved(lane: &SponsorLane): u64 { lane.reserved }

public fun available(lane: &SponsorLane): u64 { lane.funds.value() - lane.reserved }

/// How many pledges the lane holds (connections not yet reimbursed).
public fun pledge_count(lane: &SponsorLane): u64 { lane.pledges.length() }

public fun pledge_of(lane: &SponsorLane, connection: ID): u64 {
    if (lane.pledges.contains(connection)) *lane.pledges.borrow(connection) else 0
}

// === Internal ===

/// Remove the lane's pledge to the settled connection `tc` and pay its client
/// `min(pledge, claimed * share_bps / 10000)` from the lane; the rest is released.
fun pay_pledge(
    lane: &mut SponsorLane,
    pool: &SponsorPool,
    tc: &TransportControl,
    escrow: &Escrow,
    ctx: &mut TxContext,
): u64 {
    let connection = tc.connection_id();
    let pledge = lane.pledges.remove(connection);
    let share = pool.share_of(escrow.claimed());
    let amount = if (share < pledge) share else pledge;
    lane.reserved = lane.reserved - pledge;
    let client = tc.client();
    if (amount > 0) {
        let part = lane.funds.split(amount);
        transfer::public_transfer(coin::from_balance(part, ctx), client);
    };
    event::emit(SponsorReimbursed {
        pool: lane.pool,
        lane: object::id(lane),
        connection,
        client,
        claimed: escrow.claimed(),
        amount,
    });
    amount
}

fun share_of(pool: &SponsorPool, amount: u64): u64 {
    (((amount as u128) * (pool.share_bps as u128) / (BPS as u128)) as u64)
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `pool` was made by or last migrated to.
public fun pool_version(pool: &SponsorPool): u64 { pool.version }

/// Abort with `version::EWrongVersion` unless `pool` is of this package's version.
public(package) fun check_pool_version(pool: &SponsorPool) { version::check(pool.version) }

/// The admin migrates `pool` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate_pool(_: &AdminCap, pool: &mut SponsorPool) {
    pool.version = version::migrate(object::id(pool), pool.version);
}

#[test_only]
public fun set_pool_version_for_testing(pool: &mut SponsorPool, v: u64) { pool.version = v; }

/// The package version `lane` was made by or last migrated to.
public fun lane_version(lane: &SponsorLane): u64 { lane.version }

/// Abort with `version::EWrongVersion` unless `lane` is of this package's version.
public(package) fun check_lane_version(lane: &SponsorLane) { version::check(lane.version) }

/// The admin migrates `lane` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate_lane(_: &AdminCap, lane: &mut SponsorLane) {
    lane.version = version::migrate(object::id(lane), lane.version);
}

#[test_only]
public fun set_lane_version_for_testing(lane: &mut SponsorLane, v: u64) { lane.version = v; }
