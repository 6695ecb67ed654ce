/// Prepaid response fees for RPC requests (docs/escrow.md "Mailbox and response escrow").
///
/// The requester deposits the fee for one request, naming the server and a deadline.
/// Each side then has a path that needs nothing from the other:
///
/// - the server is paid by `claim` with the requester's acknowledgement — a raw Ed25519
///   signature by the requester over the response's hash — at any time while the escrow
///   is open; or, without an acknowledgement, by `deliver`, which posts the response
///   itself as an event before the deadline (so the requester gets it from the ledger);
///   the chain checks only that a response is there (not empty, within the size any
///   transaction can carry): what it says is for the requester to judge, off-chain
///   (docs/escrow.md §12: a deliberate trust decision, and the requester's protection);
/// - the requester takes the fee back with `refund` once the deadline has passed and
///   neither happened.
///
/// Acknowledgement message (112 bytes, the concatenated BCS encodings of):
///
/// ```text
///  offset size  field
///   0      1    0x0f                 BCS length prefix of the domain tag
///   1     15    b"DTP-RESPONSE-V2"   domain tag
///  16     32    package              this package's original ID (`escrow::receipt_package`)
///  48     32    escrow ID            the ResponseEscrow object ID
///  80     32    response hash        BLAKE2b-256 of the RESPONSE frame's msgpack body
/// ```
///
/// The tag and the package are the acknowledgement's domain, as a receipt's: it verifies
/// for one escrow of one deployment of the package (version 1 signed the escrow alone).
module dtp::response_escrow;

use dtp::escrow;
use dtp::version::{Self, AdminCap};
use sui::balance::Balance;
use sui::bcs;
use sui::clock::Clock;
use sui::coin::{Self, Coin};
use sui::ed25519;
use sui::event;
use sui::sui::SUI;

// === Errors ===

#[error(code = 170)]
const ENotServer: vector<u8> = b"Only the response escrow's server can do this";
#[error(code = 171)]
const ENotRequester: vector<u8> = b"Only the response escrow's requester can do this";
#[error(code = 172)]
const EEscrowClosed: vector<u8> = b"Response escrow is already paid or refunded";
#[error(code = 173)]
const EBadSignature: vector<u8> = b"Acknowledgement does not verify against the requester's key";
#[error(code = 174)]
const EDeadlinePassed: vector<u8> = b"The response deadline has passed";
#[error(code = 175)]
const EDeadlineNotReached: vector<u8> = b"The response deadline has not passed yet";
#[error(code = 176)]
const EZeroAmount: vector<u8> = b"Response fee must be positive";
#[error(code = 177)]
const EInvalidPublicKey: vector<u8> = b"Ed25519 public key must be 32 bytes";
#[error(code = 178)]
const EKeyMismatch: vector<u8> = b"Public key does not belong to the requester's address";
#[error(code = 179)]
const ERequestIdTooLong: vector<u8> = b"Request id exceeds 64 bytes";
#[error(code = 180)]
const EDeadlineInPast: vector<u8> = b"Deadline must be after the current time";
#[error(code = 181)]
const EInvalidHash: vector<u8> = b"Response hash must be 32 bytes";
#[error(code = 182)]
const EResponseTooLarge: vector<u8> = b"Response exceeds the per-message limit";
#[error(code = 183)]
const EEmptyResponse: vector<u8> = b"A delivered response must not be empty";
#[error(code = 184)]
const EEscrowOpen: vector<u8> = b"Response escrow is still open: it is deleted once paid or refunded";

// === Constants ===

const ACK_DOMAIN: vector<u8> = b"DTP-RESPONSE-V2";
const MAX_REQUEST_ID_LENGTH: u64 = 64;
// the most one pure argument can carry on Sui (see inner_pipe::MAX_DATA_LENGTH)
const MAX_RESPONSE_LENGTH: u64 = 16_381;
const ED25519_KEY_LENGTH: u64 = 32;
const HASH_LENGTH: u64 = 32;

const STATE_OPEN: u8 = 0;
const STATE_PAID: u8 = 1;
const STATE_DELIVERED: u8 = 2;
const STATE_REFUNDED: u8 = 3;

// === Object ===

/// Shared: the server claims or delivers, the requester refunds.
public struct ResponseEscrow has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    requester: address,
    /// Acknowledgements must verify against this key (it derives `requester`).
    requester_public_key: vector<u8>,
    /// The only address that can claim or deliver, and the one paid.
    server: address,
    /// Opaque id chosen by the requester (at most 64 bytes).
    request_id: vector<u8>,
    /// Clock time (ms) after which the requester may take the fee back.
    deadline_ms: u64,
    funds: Balance<SUI>,
    /// MIST deposited.
    amount: u64,
    /// 0 open, 1 paid (acknowledged), 2 delivered on chain, 3 refunded.
    state: u8,
}

// === Events ===

public struct ResponseFeeDeposited has copy, drop {
    escrow: ID,
    requester: address,
    server: address,
    request_id: vector<u8>,
    amount: u64,
    deadline_ms: u64,
}

public struct ResponseFeeClaimed has copy, drop {
    escrow: ID,
    server: address,
    amount: u64,
    response_hash: vector<u8>,
}

public struct ResponseDelivered has copy, drop {
    escrow: ID,
    requester: address,
    request_id: vector<u8>,
    response: vector<u8>,
    amount: u64,
}

public struct ResponseFeeRefunded has copy, drop {
    escrow: ID,
    requester: address,
    amount: u64,
}

public struct ResponseEscrowDeleted has copy, drop {
    escrow: ID,
    requester: address,
    /// The final state it was deleted in: 1 paid, 2 delivered, 3 refunded.
    state: u8,
}

// === Entry points ===

/// Prepay `fee` for a response from `server` by `deadline_ms`. Checks, in order: the key
/// is 32 bytes (`EInvalidPublicKey`) and derives the sender (`EKeyMismatch`), the fee is
/// positive (`EZeroAmount`), the request id fits (`ERequestIdTooLong`), the deadline is
/// in the future (`EDeadlineInPast`).
public fun deposit(
    server: address,
    request_id: vector<u8>,
    requester_public_key: vector<u8>,
    deadline_ms: u64,
    fee: Coin<SUI>,
    clock: &Clock,
    ctx: &mut TxContext,
): ID {
    assert!(requester_public_key.length() == ED25519_KEY_LENGTH, EInvalidPublicKey);
    assert!(escrow::ed25519_address(&requester_public_key) == ctx.sender(), EKeyMismatch);
    let amount = fee.value();
    assert!(amount > 0, EZeroAmount);
    assert!(request_id.length() <= MAX_REQUEST_ID_LENGTH, ERequestIdTooLong);
    assert!(deadline_ms > clock.timestamp_ms(), EDeadlineInPast);
    let e = ResponseEscrow {
        id: object::new(ctx),
        version: version::current(),
        requester: ctx.sender(),
        requester_public_key,
        server,
        request_id,
        deadline_ms,
        funds: fee.into_balance(),
        amount,
        state: STATE_OPEN,
    };
    let escrow_id = object::id(&e);
    event::emit(ResponseFeeDeposited {
        escrow: escrow_id,
        requester: e.requester,
        server,
        request_id: e.request_id,
        amount,
        deadline_ms,
    });
    transfer::share_object(e);
    escrow_id
}

/// The server is paid with the requester's acknowledgement of the response whose hash
/// is `response_hash`. Checks: sender is the server (`ENotServer`), still open
/// (`EEscrowClosed`), hash length (`EInvalidHash`), the signature (`EBadSignature`).
public fun claim(
    e: &mut ResponseEscrow,
    response_hash: vector<u8>,
    signature: vector<u8>,
    ctx: &mut TxContext,
): u64 {
    e.check_version();
    assert!(ctx.sender() == e.server, ENotServer);
    assert!(e.state == STATE_OPEN, EEscrowClosed);
    assert!(response_hash.length() == HASH_LENGTH, EInvalidHash);
    let message = ack_message(escrow::receipt_package(), object::id(e), response_hash);
    assert!(
        ed25519::ed25519_verify(&signature, &e.requester_public_key, &message),
        EBadSignature,
    );
    let to = e.server; // (read before `e` is lent to pay_out)
    let amount = pay_out(e, to, STATE_PAID, ctx);
    event::emit(ResponseFeeClaimed {
        escrow: object::id(e),
        server: e.server,
        amount,
        response_hash,
    });
    amount
}

/// Without an acknowledgement, the server posts the response on chain before the
/// deadline and is paid. Checks: server (`ENotServer`), open (`EEscrowClosed`), not past
/// the deadline (`EDeadlinePassed`), not empty (`EEmptyResponse`), size
/// (`EResponseTooLarge`). Nothing more: the chain cannot tell an answer from bytes that
/// look like one, so paying on delivery trusts the server (docs/escrow.md §12).
public fun deliver(
    e: &mut ResponseEscrow,
    response: vector<u8>,
    clock: &Clock,
    ctx: &mut TxContext,
): u64 {
    e.check_version();
    assert!(ctx.sender() == e.server, ENotServer);
    assert!(e.state == STATE_OPEN, EEscrowClosed);
    assert!(clock.timestamp_ms() <= e.deadline_ms, EDeadlinePassed);
    assert!(response.length() > 0, EEmptyResponse);
    assert!(response.length() <= MAX_RESPONSE_LENGTH, EResponseTooLarge);
    let to = e.server; // (read before `e` is lent to pay_out)
    let amount = pay_out(e, to, STATE_DELIVERED, ctx);
    event::emit(ResponseDelivered {
        escrow: object::id(e),
        requester: e.requester,
        request_id: e.request_id,
        response,
        amount,
    });
    amount
}

/// After the deadline, the requester takes back an unpaid fee. Checks: requester
/// (`ENotRequester`), open (`EEscrowClosed`), past the deadline (`EDeadlineNotReached`).
public fun refund(e: &mut ResponseEscrow, clock: &Clock, ctx: &mut TxContext): u64 {
    e.check_version();
    assert!(ctx.sender() == e.requester, ENotRequester);
    assert!(e.state == STATE_OPEN, EEscrowClosed);
    assert!(clock.timestamp_ms() > e.deadline_ms, EDeadlineNotReached);
    let to = e.requester; // (read before `e` is lent to pay_out)
    let amount = pay_out(e, to, STATE_REFUNDED, ctx);
    event::emit(ResponseFeeRefunded { escrow: object::id(e), requester: e.requester, amount });
    amount
}

/// The requester deletes its escrow once it is paid, delivered or refunded: its deposit
/// paid for the object's storage, whose rebate Sui credits to the deleting transaction's
/// gas payer (a refund and the deletion fit one transaction). Checks: requester
/// (`ENotRequester`), not open (`EEscrowOpen`). Every final state left no funds, so no
/// MIST moves; what the escrow did stays in its events (`ResponseDelivered` carries a
/// delivered response).
public fun destroy(e: ResponseEscrow, ctx: &TxContext) {
    e.check_version();
    assert!(ctx.sender() == e.requester, ENotRequester);
    assert!(e.state != STATE_OPEN, EEscrowOpen);
    let ResponseEscrow { id, requester, funds, state, .. } = e;
    funds.destroy_zero();
    event::emit(ResponseEscrowDeleted { escrow: id.to_inner(), requester, state });
    id.delete();
}

// === Helpers ===

fun pay_out(e: &mut ResponseEscrow, to: address, state: u8, ctx: &mut TxContext): u64 {
    let amount = e.funds.value();
    e.state = state;
    if (amount > 0) {
        let all = e.funds.withdraw_all();
        transfer::public_transfer(coin::from_balance(all, ctx), to);
    };
    amount
}

/// The bytes a requester signs to acknowledge a response (layout in the module docs);
/// `claim` builds them for this package's original ID.
public fun ack_message(
    package: address,
    escrow_id: ID,
    response_hash: vector<u8>,
): vector<u8> {
    let mut message = bcs::to_bytes(&ACK_DOMAIN);
    message.append(bcs::to_bytes(&package));
    message.append(bcs::to_bytes(&escrow_id));
    message.append(response_hash);
    message
}

// === Reading ===

public fun requester(e: &ResponseEscrow): address { e.requester }

public fun server(e: &ResponseEscrow): address { e.server }

public fun deadline_ms(e: &ResponseEscrow): u64 { e.deadline_ms }

public fun balance(e: &ResponseEscrow): u64 { e.funds.value() }

public fun amount(e: &ResponseEscrow): u64 { e.amount }

public fun state(e: &ResponseEscrow): u8 { e.state }

public fun is_open(e: &ResponseEscrow): bool { e.state == STATE_OPEN }

// === Versions (docs/escrow.md "Versions") ===

/// The package version `e` was made by or last migrated to.
public fun package_version(e: &ResponseEscrow): u64 { e.version }

/// Abort with `version::EWrongVersion` unless `e` is of this package's version.
public(package) fun check_version(e: &ResponseEscrow) { version::check(e.version) }

/// The admin migrates `e` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, e: &mut ResponseEscrow) {
    e.version = version::migrate(object::id(e), e.version);
}

#[test_only]
public fun set_version_for_testing(e: &mut ResponseEscrow, v: u64) { e.version = v; }
