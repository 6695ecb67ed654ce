/// Data retention on the ledger carrier, with a storage deposit per byte.
///
/// A service publishes `RetentionTerms` (host, port): how long data sent through the
/// ledger must be kept (`retention_ms`, at most `MAX_RETENTION_MS`) and the storage
/// deposit per byte. A participant of an Open connection sends a record with `send`: it
/// goes out on the pipe as usual (`PipeDataSent`) and is also kept in a shared
/// `RetainedRecord` holding the data and the sender's deposit
/// `len(data) * storage_price_per_byte`.
///
/// The deposit always has a way back to the sender within a bounded time. The receiver
/// confirms consumption (`confirm`); the sender deletes a confirmed record once
/// `retention_ms` has passed since it was stored, and an unconfirmed one once twice
/// that has passed (`reclaim_after_ms`): a receiver that never confirms holds the
/// deposit at most `2 * MAX_RETENTION_MS`. `delete` returns the whole deposit.
///
/// "The terms the host offers" are its authority's live terms: only the authority
/// creates terms for its host, and it takes them back with `retire_terms` (or
/// `replace_terms`, retiring and creating in one step). `send` takes only live terms of
/// the connection's host and port, so a sender cannot pick an old or cheaper set the
/// provider withdrew.
///
/// On Sui the record's object storage fee is in addition rebated to the deleter by the
/// network (gas storage rebate); the explicit deposit is what LocalLedger models, and the
/// same rule on both ledgers.
module dtp::retention;

use dtp::host::Host;
use dtp::pipe::Pipe;
use dtp::transport_control::{Self, TransportControl};
use dtp::version::{Self, AdminCap};
use sui::balance::Balance;
use sui::clock::Clock;
use sui::coin::{Self, Coin};
use sui::event;
use sui::sui::SUI;

// === Errors ===

#[error(code = 220)]
const ENotProvider: vector<u8> = b"Only the host's authority can set retention terms";
#[error(code = 221)]
const EWrongConnection: vector<u8> = b"The pipe does not belong to this connection";
#[error(code = 222)]
const EWrongTerms: vector<u8> = b"The terms are not those of the connection's service";
#[error(code = 223)]
const EWrongDeposit: vector<u8> = b"Deposit must be the data length times the storage price per byte";
#[error(code = 224)]
const ENotReceiver: vector<u8> = b"Only the record's receiver can confirm consumption";
#[error(code = 225)]
const EAlreadyConsumed: vector<u8> = b"Consumption was already confirmed";
#[error(code = 226)]
const ENotSender: vector<u8> = b"Only the record's sender can delete it";
#[error(code = 227)]
const ENotConsumed: vector<u8> = b"The receiver has not confirmed consumption and the reclaim time has not come";
#[error(code = 228)]
const ERetentionNotElapsed: vector<u8> = b"The retention time has not elapsed";
#[error(code = 229)]
const ETermsRetired: vector<u8> = b"The provider retired these retention terms";
// (220-229 are full: retention goes on at 240)
#[error(code = 240)]
const EConnectionNotOpen: vector<u8> = b"Records are sent only on an Open connection";
#[error(code = 241)]
const EInvalidTerms: vector<u8> = b"Retention time exceeds the maximum of 30 days";

// === Constants ===

/// The longest retention terms may ask (30 days): with the unconfirmed record's second
/// period, no deposit is held more than 60 days.
const MAX_RETENTION_MS: u64 = 2_592_000_000;

// === Objects ===

public struct RetentionTerms has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    host: ID,
    port: u16,
    /// Records are kept at least this long after they are stored (ms).
    retention_ms: u64,
    /// MIST deposited per byte of data, returned when the record is deleted.
    storage_price_per_byte: u64,
    /// Taken back by the provider (`retire_terms`): `send` refuses the terms.
    retired: bool,
}

public struct RetainedRecord has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    connection: ID,
    pipe: ID,
    inner: u64,
    seq: u64,
    sender: address,
    receiver: address,
    data: vector<u8>,
    stored_at_ms: u64,
    retention_ms: u64,
    deposit: Balance<SUI>,
    consumed: bool,
}

// === Events ===

public struct RetentionTermsCreated has copy, drop {
    terms: ID,
    host: ID,
    port: u16,
    retention_ms: u64,
    storage_price_per_byte: u64,
}

public struct RecordRetained has copy, drop {
    record: ID,
    connection: ID,
    pipe: ID,
    inner: u64,
    seq: u64,
    sender: address,
    receiver: address,
    deposit: u64,
    delete_after_ms: u64,
    /// From this time the sender may delete the record unconfirmed.
    reclaim_after_ms: u64,
}

public struct RetentionTermsRetired has copy, drop {
    terms: ID,
    host: ID,
    port: u16,
}

public struct RecordConsumed has copy, drop {
    record: ID,
    receiver: address,
}

public struct RecordDeleted has copy, drop {
    record: ID,
    sender: address,
    refunded: u64,
}

// === Provider ===

/// Publish retention terms for the service `port` of `host`. Checks: authority
/// (`ENotProvider`), the service exists (`host::EServiceNotFound`), `retention_ms <=
/// MAX_RETENTION_MS` (`EInvalidTerms`). Returns the terms' ID.
public fun create_terms(
    host: &Host,
    port: u16,
    retention_ms: u64,
    storage_price_per_byte: u64,
    ctx: &mut TxContext,
): ID {
    host.check_version();
    assert!(ctx.sender() == host.authority(), ENotProvider);
    let _ = host.service(port);
    assert!(retention_ms <= MAX_RETENTION_MS, EInvalidTerms);
    let terms = RetentionTerms {
        id: object::new(ctx),
        version: version::current(),
        host: object::id(host),
        port,
        retention_ms,
        storage_price_per_byte,
        retired: false,
    };
    let terms_id = object::id(&terms);
    event::emit(RetentionTermsCreated {
        terms: terms_id,
        host: terms.host,
        port,
        retention_ms,
        storage_price_per_byte,
    });
    transfer::share_object(terms);
    terms_id
}

/// Stop offering `terms`: `send` refuses them from now on (records already kept keep
/// their deadlines). Checks: the host's authority now (`ENotProvider`), the terms are
/// this host's (`EWrongTerms`), not retired yet (`ETermsRetired`).
public fun retire_terms(terms: &mut RetentionTerms, host: &Host, ctx: &TxContext) {
    terms.check_terms_version();
    host.check_version();
    assert!(ctx.sender() == host.authority(), ENotProvider);
    assert!(terms.host == object::id(host), EWrongTerms);
    assert!(!terms.retired, ETermsRetired);
    terms.retired = true;
    event::emit(RetentionTermsRetired {
        terms: object::id(terms),
        host: terms.host,
        port: terms.port,
    });
}

/// Replace `terms` with new ones for the same port in one step: `retire_terms`, then
/// `create_terms` (their checks, in that order). Returns the new terms' ID.
public fun replace_terms(
    terms: &mut RetentionTerms,
    host: &Host,
    retention_ms: u64,
    storage_price_per_byte: u64,
    ctx: &mut TxContext,
): ID {
    terms.check_terms_version();
    host.check_version();
    retire_terms(terms, host, ctx);
    create_terms(host, terms.port, retention_ms, storage_price_per_byte, ctx)
}

// === Sender ===

/// Send `data` on lane `inner` of the sender's pipe and retain it. Checks: the pipe's
/// connection is `tc` (`EWrongConnection`), the connection is Open
/// (`EConnectionNotOpen`: neither side has closed it), the terms are the connection's
/// service's (`EWrongTerms`) and not retired (`ETermsRetired`), deposit == len(data) *
/// price (`EWrongDeposit`), then those of `pipe::send` (`EInnerNotFound`,
/// `EDataTooLarge`). Returns the record's ID.
public fun send(
    pipe: &mut Pipe,
    tc: &TransportControl,
    terms: &RetentionTerms,
    inner: u64,
    data: vector<u8>,
    deposit: Coin<SUI>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    tc.check_version();
    terms.check_terms_version();
    assert!(pipe.connection() == tc.connection_id(), EWrongConnection);
    assert!(tc.state_code() == transport_control::state_open(), EConnectionNotOpen);
    assert!(terms.host == tc.host_id() && terms.port == tc.port(), EWrongTerms);
    assert!(!terms.retired, ETermsRetired);
    let amount = deposit.value();
    assert!(
        (amount as u128) == (data.length() as u128) * (terms.storage_price_per_byte as u128),
        EWrongDeposit,
    );
    let seq = pipe.send(inner, copy data);
    let sender = ctx.sender();
    let receiver = if (sender == tc.client()) tc.server() else tc.client();
    let now = clock.timestamp_ms();
    let record = RetainedRecord {
        id: object::new(ctx),
        version: version::current(),
        connection: tc.connection_id(),
        pipe: object::id(pipe),
        inner,
        seq,
        sender,
        receiver,
        data,
        stored_at_ms: now,
        retention_ms: terms.retention_ms,
        deposit: deposit.into_balance(),
        consumed: false,
    };
    let record_id = object::id(&record);
    event::emit(RecordRetained {
        record: record_id,
        connection: record.connection,
        pipe: record.pipe,
        inner,
        seq,
        sender,
        receiver,
        deposit: amount,
        delete_after_ms: now + terms.retention_ms,
        reclaim_after_ms: now + 2 * terms.retention_ms,
    });
    transfer::share_object(record);
    record_id
}

/// Delete a record; the whole deposit goes back to the sender. A confirmed record may go
/// once its retention time has passed, an unconfirmed one once twice that has
/// (`reclaim_after_ms`: the receiver had the retention time to read and confirm it, and
/// as long again). Checks: sender (`ENotSender`), consumed or now >= reclaim_after_ms
/// (`ENotConsumed`), now >= stored_at_ms + retention_ms (`ERetentionNotElapsed`).
/// Returns the refund.
public fun delete(record: RetainedRecord, clock: &Clock, ctx: &mut TxContext): u64 {
    record.check_record_version();
    assert!(ctx.sender() == record.sender, ENotSender);
    let now = clock.timestamp_ms();
    assert!(record.consumed || now >= reclaim_after_ms(&record), ENotConsumed);
    assert!(now >= record.stored_at_ms + record.retention_ms, ERetentionNotElapsed);
    let RetainedRecord {
        id,
        version: _,
        connection: _,
        pipe: _,
        inner: _,
        seq: _,
        sender,
        receiver: _,
        data: _,
        stored_at_ms: _,
        retention_ms: _,
        deposit,
        consumed: _,
    } = record;
    let refunded = deposit.value();
    if (refunded > 0) {
        transfer::public_transfer(coin::from_balance(deposit, ctx), sender);
    } else {
        deposit.destroy_zero();
    };
    event::emit(RecordDeleted { record: id.to_inner(), sender, refunded });
    id.delete();
    refunded
}

// === Receiver ===

/// The receiver confirms it consumed the record. Checks: receiver (`ENotReceiver`), not
/// confirmed before (`EAlreadyConsumed`).
public fun confirm(record: &mut RetainedRecord, ctx: &TxContext) {
    record.check_record_version();
    assert!(ctx.sender() == record.receiver, ENotReceiver);
    assert!(!record.consumed, EAlreadyConsumed);
    record.consumed = true;
    event::emit(RecordConsumed { record: object::id(record), receiver: record.receiver });
}

// === Reading ===

public fun retention_ms(terms: &RetentionTerms): u64 { terms.retention_ms }

public fun storage_price_per_byte(terms: &RetentionTerms): u64 { terms.storage_price_per_byte }

public fun is_retired(terms: &RetentionTerms): bool { terms.retired }

public fun max_retention_ms(): u64 { MAX_RETENTION_MS }

public fun data(record: &RetainedRecord): vector<u8> { record.data }

public fun deposit_value(record: &RetainedRecord): u64 { record.deposit.value() }

public fun is_consumed(record: &RetainedRecord): bool { record.consumed }

public fun delete_after_ms(record: &RetainedRecord): u64 { record.stored_at_ms + record.retention_ms }

/// From this time the sender may delete the record even unconfirmed.
public fun reclaim_after_ms(record: &RetainedRecord): u64 {
    record.stored_at_ms + 2 * record.retention_ms
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `terms` was made by or last migrated to.
public fun terms_version(terms: &RetentionTerms): u64 { terms.version }

/// Abort with `version::EWrongVersion` unless `terms` is of this package's version.
public(package) fun check_terms_version(terms: &RetentionTerms) { version::check(terms.version) }

/// The admin migrates `terms` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate_terms(_: &AdminCap, terms: &mut RetentionTerms) {
    terms.version = version::migrate(object::id(terms), terms.version);
}

#[test_only]
public fun set_terms_version_for_testing(terms: &mut RetentionTerms, v: u64) { terms.version = v; }

/// The package version `record` was made by or last migrated to.
public fun record_version(record: &RetainedRecord): u64 { record.version }

/// Abort with `version::EWrongVersion` unless `record` is of this package's version.
public(package) fun check_record_version(record: &RetainedRecord) { version::check(record.version) }

/// The admin migrates `record` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate_record(_: &AdminCap, record: &mut RetainedRecord) {
    record.version = version::migrate(object::id(record), record.version);
}

#[test_only]
public fun set_record_version_for_testing(record: &mut RetainedRecord, v: u64) { record.version = v; }
