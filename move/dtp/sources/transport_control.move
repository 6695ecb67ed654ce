/// One DTP connection's control object: who talks to whom, on what terms, and in which
/// state. Shared, one per connection; its ID is the connection ID that receipts name.
///
/// Lifecycle (the whole table; details in docs/escrow.md):
///
/// ```text
///  open ──> Open ──close(A)──> HalfClosed{by: A, at_ms} ──close(B)──────────> Closed
///                                    │ ──finalize, now >= at_ms + timeout──> Closed
///                                    │ ──settle by the server──────────────> Closed + settled
///  Closed ──settle (server: any time; client: now >= half-close at_ms + timeout)──> settled
/// ```
///
/// The timeout is the connection's own: its SLA's `half_close_timeout_ms`, which the
/// provider chose for the service (10 minutes unless it chose longer) and the connection
/// copied when it opened. The server can claim receipts from the escrow at any time
/// before settlement; settling optionally claims a final receipt and then refunds the
/// rest to the client. The client may only settle once the server has had the timeout
/// since the first close to submit its last receipt.
///
/// Only `open` reads the `Host`, and read-only: closing and settling touch the
/// connection's own objects (and the client's spending cap), so the connections of one
/// host never queue behind each other on Sui (docs/escrow.md "Throughput").
module dtp::transport_control;

use dtp::escrow::{Self, Escrow};
use dtp::host::{Self, Host, Sla};
use dtp::spending_cap::SpendingCap;
use dtp::version::{Self, AdminCap};
use sui::clock::Clock;
use sui::coin::Coin;
use sui::event;
use sui::sui::SUI;

// === Errors ===

#[error(code = 50)]
const EInsufficientDeposit: vector<u8> = b"Deposit is below the service's minimum";
#[error(code = 51)]
const ENotParticipant: vector<u8> = b"Sender is neither the client nor the server of this connection";
#[error(code = 52)]
const EConnectionClosed: vector<u8> = b"Connection is already closed";
#[error(code = 53)]
const EAlreadyHalfClosed: vector<u8> = b"Sender already closed its side; wait for the peer or the timeout";
#[error(code = 54)]
const ENotHalfClosed: vector<u8> = b"Connection is not half-closed";
#[error(code = 55)]
const ETimeoutNotReached: vector<u8> = b"Half-close timeout has not elapsed";
#[error(code = 56)]
const EConnectionOpen: vector<u8> = b"Connection must be closed (or half-closed) first, or settled by the server";
// Code 57 (EWrongHost) is retired: closing and settling no longer take the Host.
#[error(code = 58)]
const EWrongEscrow: vector<u8> = b"Not this connection's escrow";
#[error(code = 59)]
const EAlreadySettled: vector<u8> = b"Connection is already settled";
#[error(code = 60)]
const ENotClient: vector<u8> = b"Only the connection's client can delete it";
#[error(code = 61)]
const ENotSettled: vector<u8> = b"Connection must be settled before it is deleted";
#[error(code = 242)]
const ESponsored: vector<u8> = b"A sponsored connection is deleted by sponsor::reimburse_and_destroy, which reimburses it first";

// === Constants ===

/// `state_code` values.
const STATE_OPEN: u8 = 0;
const STATE_HALF_CLOSED: u8 = 1;
const STATE_CLOSED: u8 = 2;

// === Objects ===

public enum State has copy, drop, store {
    Open,
    /// `by` closed its side at `at_ms`; the peer may still send.
    HalfClosed { by: address, at_ms: u64 },
    /// Both sides are done (or the half-close timed out).
    Closed { half_closed_at_ms: u64, closed_at_ms: u64 },
}

public struct TransportControl has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    host: ID,
    port: u16,
    client: address,
    /// The host's authority when the connection opened; paid by the escrow.
    server: address,
    /// Terms copied from the service at open, the half-close timeout among them; never
    /// change afterwards.
    sla: Sla,
    escrow: ID,
    spending_cap: ID,
    state: State,
    opened_at_ms: u64,
    settled: bool,
    /// The Subscription a prepaid connection was opened with (`open_prepaid`); none for
    /// a metered one. Anyone may end the connection once that subscription is over
    /// (`dtp::subscription::end_connection`, docs/escrow.md §13).
    subscription: Option<ID>,
    /// The SponsorLane a sponsored connection was opened through
    /// (`dtp::sponsor::open_connection`); none for any other. Such a connection is deleted
    /// only through `dtp::sponsor::reimburse_and_destroy`, which releases its pledge first.
    sponsor: Option<ID>,
}

// === Events ===

public struct ConnectionOpened has copy, drop {
    connection: ID,
    host: ID,
    port: u16,
    client: address,
    server: address,
    escrow: ID,
    deposit: u64,
    sla: Sla,
    at_ms: u64,
}

public struct ConnectionHalfClosed has copy, drop {
    connection: ID,
    by: address,
    at_ms: u64,
}

public struct ConnectionClosed has copy, drop {
    connection: ID,
    /// Who completed the close (the peer's close, a timeout finalize, or a settlement).
    by: address,
    at_ms: u64,
}

public struct ConnectionSettled has copy, drop {
    connection: ID,
    escrow: ID,
    by: address,
    /// Total paid to the server over the connection's life.
    claimed: u64,
    /// Returned to the client by this settlement.
    refunded: u64,
}

public struct ConnectionDeleted has copy, drop {
    connection: ID,
    escrow: ID,
    client: address,
}

// === Opening ===

/// Open a connection from the sender to `host`'s service on `port`, depositing `deposit`
/// into a new escrow. `client_public_key` is the sender's Ed25519 public key, against
/// which receipts are verified; `cap` is the sender's SpendingCap, on which the whole
/// deposit is reserved.
///
/// Checks, in order: `cap` belongs to the sender (`ENotCapOwner`); the service exists
/// (`EServiceNotFound`); the firewall (`EFirewallDenied`); `deposit >= min_deposit`
/// (`EInsufficientDeposit`); the key (`EInvalidPublicKey`, `EKeyMismatch`); the cap's
/// room this epoch (`ESpendingCapExceeded`). The host is only read: its connection
/// limits are enforced by its own admission, off-chain. Returns the connection ID.
public fun open(
    host: &Host,
    port: u16,
    cap: &mut SpendingCap,
    client_public_key: vector<u8>,
    deposit: Coin<SUI>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    host.check_version();
    cap.check_version();
    let none = option::none();
    open_with(host, port, cap, client_public_key, deposit, none, none, true, clock, ctx)
}

/// `open` with a session key (docs/escrow.md §6.2): `session_public_key` is any Ed25519
/// public key the sender chose -- an ephemeral key its page holds -- and receipts are
/// verified against it instead of the sender's own key. Signing this transaction is the
/// sender's one authorisation of the key: for this connection's escrow alone, up to its
/// deposit, until it is settled. The connection's client is the sender, as with `open`.
/// The same checks as `open`, but for `EKeyMismatch` (the key is 32 bytes,
/// `EInvalidPublicKey`). Returns the connection ID.
public fun open_with_session_key(
    host: &Host,
    port: u16,
    cap: &mut SpendingCap,
    session_public_key: vector<u8>,
    deposit: Coin<SUI>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    host.check_version();
    cap.check_version();
    let none = option::none();
    open_with(host, port, cap, session_public_key, deposit, none, none, false, clock, ctx)
}

/// `open` for a holder of a live subscription (`dtp::subscription::open_connection`):
/// the same checks, but the connection's prices and minimum deposit are all zeros, so it
/// needs no deposit and every receipt must be for 0 MIST (its half-close timeout is the
/// service's); the connection records `subscription`, which ends it once over
/// (`end_prepaid`; docs/escrow.md §13).
public(package) fun open_prepaid(
    host: &Host,
    port: u16,
    cap: &mut SpendingCap,
    client_public_key: vector<u8>,
    deposit: Coin<SUI>,
    subscription: ID,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    let sub = option::some(subscription);
    open_with(host, port, cap, client_public_key, deposit, sub, option::none(), true, clock, ctx)
}

/// `open` through a sponsor lane (`dtp::sponsor::open_connection`): the same checks and
/// connection, which records `lane`, so that it is deleted only once the lane's pledge to
/// it is released (`dtp::sponsor::reimburse_and_destroy`; docs/escrow.md §7, §14).
public(package) fun open_sponsored(
    host: &Host,
    port: u16,
    cap: &mut SpendingCap,
    client_public_key: vector<u8>,
    deposit: Coin<SUI>,
    lane: ID,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    let lane = option::some(lane);
    open_with(host, port, cap, client_public_key, deposit, option::none(), lane, true, clock, ctx)
}

fun open_with(
    host: &Host,
    port: u16,
    cap: &mut SpendingCap,
    client_public_key: vector<u8>,
    deposit: Coin<SUI>,
    subscription: Option<ID>,
    sponsor: Option<ID>,
    key_of_client: bool,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    let client = ctx.sender();
    cap.assert_owner(client);
    let admitted = host.admit(port, client);
    // a prepaid connection is admitted like any other, and simply not metered
    let sla = if (subscription.is_some()) {
        host::new_sla_with_half_close_timeout(0, 0, 0, admitted.half_close_timeout_ms())
    } else admitted;
    let amount = deposit.value();
    assert!(amount >= sla.min_deposit(), EInsufficientDeposit);

    let id = object::new(ctx);
    let connection = id.to_inner();
    let server = host.authority();
    let escrow_id = escrow::create(
        connection,
        client,
        client_public_key,
        key_of_client,
        server,
        object::id(cap),
        sla,
        deposit.into_balance(),
        ctx,
    );
    // the whole deposit, so that no claim on it can be refused by the cap later (a
    // deposit of 0, a subscribed open's, always fits)
    cap.reserve(amount, ctx);
    let now = clock.timestamp_ms();
    let tc = TransportControl {
        id,
        version: version::current(),
        host: object::id(host),
        port,
        client,
        server,
        sla,
        escrow: escrow_id,
        spending_cap: object::id(cap),
        state: State::Open,
        opened_at_ms: now,
        settled: false,
        subscription,
        sponsor,
    };
    event::emit(ConnectionOpened {
        connection,
        host: tc.host,
        port,
        client,
        server,
        escrow: escrow_id,
        deposit: amount,
        sla,
        at_ms: now,
    });
    transfer::share_object(tc);
    connection
}

// === Closing ===

/// Close the sender's side. Open -> HalfClosed{by: sender}; HalfClosed by the peer ->
/// Closed.
public fun close(tc: &mut TransportControl, clock: &Clock, ctx: &TxContext) {
    tc.check_version();
    let who = ctx.sender();
    tc.assert_participant(who);
    let now = clock.timestamp_ms();
    let state = tc.state;
    match (state) {
        State::Open => {
            tc.state = State::HalfClosed { by: who, at_ms: now };
            event::emit(ConnectionHalfClosed { connection: tc.connection_id(), by: who, at_ms: now });
        },
        State::HalfClosed { by, at_ms } => {
            assert!(by != who, EAlreadyHalfClosed);
            tc.close_fully(at_ms, now, who);
        },
        State::Closed { .. } => abort EConnectionClosed,
    }
}

/// Either participant finalizes a half-closed connection whose peer did not answer within
/// the connection's half-close timeout (`half_close_timeout_ms`): HalfClosed -> Closed.
public fun finalize(tc: &mut TransportControl, clock: &Clock, ctx: &TxContext) {
    tc.check_version();
    let who = ctx.sender();
    tc.assert_participant(who);
    let now = clock.timestamp_ms();
    let state = tc.state;
    match (state) {
        State::Open => abort ENotHalfClosed,
        State::HalfClosed { by: _, at_ms } => {
            assert!(now >= at_ms + tc.half_close_timeout_ms(), ETimeoutNotReached);
            tc.close_fully(at_ms, now, who);
        },
        State::Closed { .. } => abort EConnectionClosed,
    }
}

// === Settlement ===

/// Settle without a final receipt: refund everything left in the escrow to the client,
/// count the escrow's claims on the client's `cap` (the escrow's,
/// `escrow::EWrongSpendingCap`) and release the refund from it (docs/escrow.md §4).
/// The server may settle at any time (it forgoes further claims), an Open connection
/// closing in the same step: one transaction ends a connection whose client closed it
/// in-band. The client may settle only once the connection's half-close timeout has
/// passed since the first close. An Open or half-closed connection becomes Closed.
public fun settle(
    tc: &mut TransportControl,
    escrow: &mut Escrow,
    cap: &mut SpendingCap,
    clock: &Clock,
    ctx: &mut TxContext,
) {
    tc.check_version();
    escrow.check_version();
    cap.check_version();
    let who = ctx.sender();
    tc.assert_participant(who);
    assert!(!tc.settled, EAlreadySettled);
    assert!(object::id(escrow) == tc.escrow, EWrongEscrow);
    escrow.assert_spending_cap(cap);
    let now = clock.timestamp_ms();
    let is_server = who == tc.server;
    let timeout = tc.half_close_timeout_ms();
    let state = tc.state;
    match (state) {
        State::Open => {
            assert!(is_server, EConnectionOpen);
            tc.close_fully(now, now, who);
        },
        State::HalfClosed { by: _, at_ms } => {
            assert!(is_server || now >= at_ms + timeout, ETimeoutNotReached);
            tc.close_fully(at_ms, now, who);
        },
        State::Closed { half_closed_at_ms, closed_at_ms: _ } => {
            assert!(is_server || now >= half_closed_at_ms + timeout, ETimeoutNotReached);
        },
    };
    let refunded = escrow.refund_remainder(cap, ctx);
    tc.settled = true;
    event::emit(ConnectionSettled {
        connection: tc.connection_id(),
        escrow: tc.escrow,
        by: who,
        claimed: escrow.claimed(),
        refunded,
    });
}

/// The server's final settlement, in any state but settled: claim the latest receipt,
/// then refund the rest to the client (see `escrow::claim` for the receipt checks and
/// `settle` for the rest).
public fun settle_with_receipt(
    tc: &mut TransportControl,
    escrow: &mut Escrow,
    cap: &mut SpendingCap,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    nonce: u64,
    signature: vector<u8>,
    clock: &Clock,
    ctx: &mut TxContext,
) {
    tc.check_version();
    escrow.check_version();
    cap.check_version();
    assert!(!tc.settled, EAlreadySettled);
    assert!(object::id(escrow) == tc.escrow, EWrongEscrow);
    escrow.assert_spending_cap(cap);
    // `claim` aborts with escrow::ENotServer unless the sender is the server.
    escrow.claim(total_bytes, total_requests, total_amount, nonce, signature, ctx);
    settle(tc, escrow, cap, clock, ctx);
}

/// End a prepaid connection whose subscription is over (`dtp::subscription::end_connection`,
/// which checks that, and that the connection records that subscription): in any state
/// but settled, it becomes Closed and is settled at once, whoever sends it. Nothing is
/// owed on it -- its SLA is all zeros, so every claim on it is for 0 -- and the whole
/// escrow (the deposit, normally 0) goes back to the client, released on its `cap` as
/// `settle` does. Checks: not settled (`EAlreadySettled`), the connection's escrow
/// (`EWrongEscrow`), the escrow's cap (`escrow::EWrongSpendingCap`). Returns the refund.
public(package) fun end_prepaid(
    tc: &mut TransportControl,
    escrow: &mut Escrow,
    cap: &mut SpendingCap,
    clock: &Clock,
    ctx: &mut TxContext,
): u64 {
    assert!(!tc.settled, EAlreadySettled);
    assert!(object::id(escrow) == tc.escrow, EWrongEscrow);
    escrow.assert_spending_cap(cap);
    let who = ctx.sender();
    let now = clock.timestamp_ms();
    let state = tc.state;
    match (state) {
        State::Open => tc.close_fully(now, now, who),
        State::HalfClosed { by: _, at_ms } => tc.close_fully(at_ms, now, who),
        State::Closed { .. } => {},
    };
    let refunded = escrow.refund_remainder(cap, ctx);
    tc.settled = true;
    event::emit(ConnectionSettled {
        connection: tc.connection_id(),
        escrow: tc.escrow,
        by: who,
        claimed: escrow.claimed(),
        refunded,
    });
    refunded
}

// === Deletion ===

/// The client deletes its settled connection: the TransportControl and its Escrow, whose
/// storage its open paid for. Sui credits a deleted object's storage rebate to the gas
/// payer of the deleting transaction, so only the client may delete them (a server that
/// did would pocket the client's rebate); a client's own settlement may do it in the same
/// transaction (`settle` then `destroy`). Checks, in order: the sender is the client
/// (`ENotClient`), the connection is settled (`ENotSettled`), the escrow is its own
/// (`EWrongEscrow`), the connection is not sponsored (`ESponsored`: its lane's pledge
/// must be released first, which `dtp::sponsor::reimburse_and_destroy` does and then
/// deletes it). A settled escrow holds nothing (its remainder went back at settlement),
/// so no MIST moves.
public fun destroy(tc: TransportControl, escrow: Escrow, ctx: &TxContext) {
    tc.check_version();
    escrow.check_version();
    tc.assert_deletable(&escrow, ctx);
    assert!(tc.sponsor.is_none(), ESponsored);
    tc.delete(escrow);
}

/// The checks of `destroy` but the last (`ENotClient`, `ENotSettled`, `EWrongEscrow`):
/// `dtp::sponsor::reimburse_and_destroy` makes them before it releases the pledge.
public(package) fun assert_deletable(tc: &TransportControl, escrow: &Escrow, ctx: &TxContext) {
    assert!(ctx.sender() == tc.client, ENotClient);
    assert!(tc.settled, ENotSettled);
    assert!(object::id(escrow) == tc.escrow, EWrongEscrow);
}

/// Delete the connection and its escrow (checked by `assert_deletable`).
public(package) fun delete(tc: TransportControl, escrow: Escrow) {
    let TransportControl { id, client, escrow: escrow_id, .. } = tc;
    escrow.destroy();
    event::emit(ConnectionDeleted { connection: id.to_inner(), escrow: escrow_id, client });
    id.delete();
}

// === Checks used by other modules ===

public fun is_participant(tc: &TransportControl, who: address): bool {
    who == tc.client || who == tc.server
}

/// Abort with `ENotParticipant` unless `who` is the client or the server.
public fun assert_participant(tc: &TransportControl, who: address) {
    assert!(tc.is_participant(who), ENotParticipant);
}

/// Abort with `EConnectionClosed` if the connection is Closed.
public fun assert_not_closed(tc: &TransportControl) {
    assert!(tc.state_code() != STATE_CLOSED, EConnectionClosed);
}

// === Reading ===

public fun connection_id(tc: &TransportControl): ID { object::id(tc) }

public fun host_id(tc: &TransportControl): ID { tc.host }

public fun port(tc: &TransportControl): u16 { tc.port }

public fun client(tc: &TransportControl): address { tc.client }

public fun server(tc: &TransportControl): address { tc.server }

public fun sla(tc: &TransportControl): Sla { tc.sla }

public fun escrow_id(tc: &TransportControl): ID { tc.escrow }

public fun spending_cap_id(tc: &TransportControl): ID { tc.spending_cap }

public fun state(tc: &TransportControl): State { tc.state }

public fun opened_at_ms(tc: &TransportControl): u64 { tc.opened_at_ms }

public fun is_settled(tc: &TransportControl): bool { tc.settled }

/// The Subscription a prepaid connection was opened with (none for a metered one).
public fun subscription(tc: &TransportControl): Option<ID> { tc.subscription }

/// The SponsorLane a sponsored connection was opened through (none for any other).
public fun sponsor(tc: &TransportControl): Option<ID> { tc.sponsor }

/// 0 Open, 1 HalfClosed, 2 Closed.
public fun state_code(tc: &TransportControl): u8 {
    match (&tc.state) {
        State::Open => STATE_OPEN,
        State::HalfClosed { .. } => STATE_HALF_CLOSED,
        State::Closed { .. } => STATE_CLOSED,
    }
}

/// Who half-closed the connection, if it is half-closed.
public fun half_closed_by(tc: &TransportControl): Option<address> {
    match (&tc.state) {
        State::HalfClosed { by, at_ms: _ } => option::some(*by),
        _ => option::none(),
    }
}

/// The connection's half-close timeout: its SLA's, fixed when it opened.
public fun half_close_timeout_ms(tc: &TransportControl): u64 { tc.sla.half_close_timeout_ms() }

public fun state_open(): u8 { STATE_OPEN }

public fun state_half_closed(): u8 { STATE_HALF_CLOSED }

public fun state_closed(): u8 { STATE_CLOSED }

// === Internal ===

fun close_fully(tc: &mut TransportControl, half_closed_at_ms: u64, now: u64, by: address) {
    tc.state = State::Closed { half_closed_at_ms, closed_at_ms: now };
    event::emit(ConnectionClosed { connection: tc.connection_id(), by, at_ms: now });
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `tc` was made by or last migrated to.
public fun package_version(tc: &TransportControl): u64 { tc.version }

/// Abort with `version::EWrongVersion` unless `tc` is of this package's version.
public(package) fun check_version(tc: &TransportControl) { version::check(tc.version) }

/// The admin migrates `tc` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, tc: &mut TransportControl) {
    tc.version = version::migrate(object::id(tc), tc.version);
}

#[test_only]
public fun set_version_for_testing(tc: &mut TransportControl, v: u64) { tc.version = v; }
