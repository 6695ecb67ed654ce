/// The deposit of one DTP connection, paid out against client-signed cumulative receipts.
///
/// Metering happens off-chain: the client signs receipts
/// `(package, escrow, connection, total_bytes, total_requests, total_amount, nonce)` and
/// sends them in-band;
/// the server keeps the latest and claims it here whenever it likes. A claim pays
/// `total_amount - claimed` to the server. At settlement (see `dtp::transport_control`)
/// whatever is left goes back to the client. MIST is conserved at every step:
/// `funds == deposited - claimed - refunded`.
///
/// The deposit and every top-up are reserved on the client's `SpendingCap` when they are
/// paid in (`dtp::spending_cap::reserve`: they become its `outstanding`), so a claim needs
/// nothing from the cap and cannot be refused by it. The escrow notes the epoch of its
/// claims and reports them to the cap at the next top-up or the settlement, which also
/// releases the refund (docs/escrow.md §4).
///
/// Receipt message, version 2 (the exact bytes the client signs with raw Ed25519, no Sui
/// intent prefix, no hashing), 143 bytes, all integers little-endian, i.e. the
/// concatenated BCS encodings of:
///
/// ```text
///  offset size  field
///   0      1    0x0e                 BCS length prefix (ULEB128) of the domain tag
///   1     14    b"DTP-RECEIPT-V2"    domain tag
///  15     32    package              this package's original ID (`receipt_package`)
///  47     32    escrow ID            the Escrow's own object ID
///  79     32    connection ID        the TransportControl object ID
/// 111      8    total_bytes    u64
/// 119      8    total_requests u64
/// 127      8    total_amount   u64   MIST, cumulative
/// 135      8    nonce          u64   strictly increasing, from 1
/// ```
///
/// The package and escrow IDs bind a receipt to one escrow of one deployment on one chain:
/// both derive from digests of transactions whose inputs exist on that chain only. Move
/// cannot read a chain identifier, and none is signed (docs/escrow.md §6).
module dtp::escrow;

use dtp::host::{Self, Sla};
use dtp::spending_cap::SpendingCap;
use dtp::version::{Self, AdminCap};
use std::type_name;
use sui::balance::Balance;
use sui::bcs;
use sui::coin::{Self, Coin};
use sui::ed25519;
use sui::event;
use sui::hash;
use sui::sui::SUI;

// === Errors ===

#[error(code = 30)]
const ENotServer: vector<u8> = b"Only the connection's server can do this";
#[error(code = 31)]
const ENotClient: vector<u8> = b"Only the connection's client can do this";
#[error(code = 32)]
const EBadSignature: vector<u8> = b"Receipt signature does not verify against the client's key";
#[error(code = 33)]
const EReplayedReceipt: vector<u8> = b"Receipt nonce is not greater than the last claimed nonce";
#[error(code = 34)]
const EReceiptExceedsDeposit: vector<u8> = b"Receipt amount exceeds the deposit";
#[error(code = 35)]
const EReceiptNotCumulative: vector<u8> = b"Receipt amount is below what was already claimed";
#[error(code = 36)]
const EAmountMismatch: vector<u8> = b"Receipt amount does not match the connection's fees";
#[error(code = 37)]
const EEscrowSettled: vector<u8> = b"Escrow is already settled";
#[error(code = 38)]
const EWrongSpendingCap: vector<u8> = b"Not the spending cap this escrow is bound to";
#[error(code = 39)]
const EInvalidPublicKey: vector<u8> = b"Ed25519 public key must be 32 bytes";
#[error(code = 40)]
const EKeyMismatch: vector<u8> = b"Public key does not belong to the client's address";

// === Constants ===

/// Domain tag at the start of every receipt message (its version is the format's).
const RECEIPT_DOMAIN: vector<u8> = b"DTP-RECEIPT-V2";
/// Sui signature-scheme flag of Ed25519, hashed in front of the key to form an address.
const ED25519_FLAG: u8 = 0;
const ED25519_KEY_LENGTH: u64 = 32;

// === Object ===

/// Shared: the server claims from it, the client tops it up, settlement empties it.
public struct Escrow has key {
    id: UID,
    /// The package version that made it or last migrated it (`dtp::version`).
    version: u64,
    /// The connection (TransportControl) this escrow pays for; part of every receipt.
    connection: ID,
    client: address,
    /// The client's Ed25519 public key; receipts must verify against it.
    client_public_key: vector<u8>,
    /// Receives the payments: the host's authority when the connection opened.
    server: address,
    /// The client's SpendingCap, on which the deposit and top-ups are reserved.
    spending_cap: ID,
    /// This escrow's part of the cap's `outstanding`: MIST paid in and not yet reported
    /// to the cap as claimed, nor released by the settlement.
    reserved: u64,
    /// The epoch of the latest claim (the open's epoch before any).
    claim_epoch: u64,
    /// MIST claimed during `claim_epoch`.
    claimed_in_epoch: u64,
    /// Fee terms fixed when the connection opened.
    sla: Sla,
    funds: Balance<SUI>,
    /// Total MIST ever deposited (opening deposit plus top-ups).
    deposited: u64,
    /// Total MIST paid to the server.
    claimed: u64,
    /// Total MIST returned to the client.
    refunded: u64,
    /// Nonce of the last claimed receipt; 0 before any claim (receipt nonces start at 1,
    /// so a nonce of 0 is never claimable).
    latest_nonce: u64,
    settled: bool,
}

// === Events ===

public struct ReceiptClaimed has copy, drop {
    escrow: ID,
    connection: ID,
    server: address,
    nonce: u64,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    /// Paid by this claim: total_amount minus what was claimed before.
    paid: u64,
}

public struct EscrowToppedUp has copy, drop {
    escrow: ID,
    connection: ID,
    amount: u64,
    deposited: u64,
}

public struct EscrowRefunded has copy, drop {
    escrow: ID,
    connection: ID,
    client: address,
    amount: u64,
}

// === Creation (by dtp::transport_control) ===

/// Create and share the escrow of a new connection, whose whole deposit was reserved on
/// `spending_cap` in the current epoch. Checks that `client_public_key` is 32 bytes and,
/// when `key_of_client`, the Ed25519 key of `client`: address == blake2b256(0x00 || key)
/// (a session key, `transport_control::open_with_session_key`, is any key).
public(package) fun create(
    connection: ID,
    client: address,
    client_public_key: vector<u8>,
    key_of_client: bool,
    server: address,
    spending_cap: ID,
    sla: Sla,
    deposit: Balance<SUI>,
    ctx: &mut TxContext,
): ID {
    assert!(client_public_key.length() == ED25519_KEY_LENGTH, EInvalidPublicKey);
    assert!(!key_of_client || ed25519_address(&client_public_key) == client, EKeyMismatch);
    let deposited = deposit.value();
    let escrow = Escrow {
        id: object::new(ctx),
        version: version::current(),
        connection,
        client,
        client_public_key,
        server,
        spending_cap,
        reserved: deposited,
        claim_epoch: ctx.epoch(),
        claimed_in_epoch: 0,
        sla,
        funds: deposit,
        deposited,
        claimed: 0,
        refunded: 0,
        latest_nonce: 0,
        settled: false,
    };
    let escrow_id = object::id(&escrow);
    transfer::share_object(escrow);
    escrow_id
}

// === Claims ===

/// The server claims a receipt: pays `total_amount - claimed` to the server and returns
/// that amount. Checks, in this order: sender is the server (`ENotServer`), not settled
/// (`EEscrowSettled`), nonce > latest (`EReplayedReceipt`; nonce 0 never passes), the
/// signature over the message for this package, this escrow and its connection
/// (`EBadSignature`), amount == fee of bytes and requests under the SLA
/// (`EAmountMismatch`), amount <= deposited (`EReceiptExceedsDeposit`), amount >= claimed
/// (`EReceiptNotCumulative`). The spending cap is not involved: the deposit was reserved
/// on it when it was paid in; the escrow notes the claim's epoch, which it reports to the
/// cap at its next top-up or its settlement.
public fun claim(
    escrow: &mut Escrow,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    nonce: u64,
    signature: vector<u8>,
    ctx: &mut TxContext,
): u64 {
    escrow.check_version();
    let signed_for = object::id(escrow);
    escrow.claim_signed_for(
        signed_for,
        total_bytes,
        total_requests,
        total_amount,
        nonce,
        signature,
        ctx,
    )
}

/// `claim`, with the receipt's signature checked over the message for the escrow ID
/// `signed_for`: the escrow's own, always, but in the tests (`claim_for_testing`), whose
/// fixed signatures cannot know the IDs `sui::test_scenario` derives.
fun claim_signed_for(
    escrow: &mut Escrow,
    signed_for: ID,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    nonce: u64,
    signature: vector<u8>,
    ctx: &mut TxContext,
): u64 {
    assert!(ctx.sender() == escrow.server, ENotServer);
    assert!(!escrow.settled, EEscrowSettled);
    assert!(nonce > escrow.latest_nonce, EReplayedReceipt);
    let message = receipt_message(
        receipt_package(),
        signed_for,
        escrow.connection,
        total_bytes,
        total_requests,
        total_amount,
        nonce,
    );
    assert!(
        ed25519::ed25519_verify(&signature, &escrow.client_public_key, &message),
        EBadSignature,
    );
    assert!(
        (total_amount as u256) == host::fee(&escrow.sla, total_bytes, total_requests),
        EAmountMismatch,
    );
    assert!(total_amount <= escrow.deposited, EReceiptExceedsDeposit);
    assert!(total_amount >= escrow.claimed, EReceiptNotCumulative);

    let paid = total_amount - escrow.claimed;
    escrow.claimed = total_amount;
    escrow.latest_nonce = nonce;
    escrow.note_claim(paid, ctx.epoch());
    if (paid > 0) {
        // funds == deposited - claimed_before >= total_amount - claimed_before == paid
        let payment = escrow.funds.split(paid);
        transfer::public_transfer(coin::from_balance(payment, ctx), escrow.server);
    };
    event::emit(ReceiptClaimed {
        escrow: object::id(escrow),
        connection: escrow.connection,
        server: escrow.server,
        nonce,
        total_bytes,
        total_requests,
        total_amount,
        paid,
    });
    paid
}

/// The client adds to the deposit of an unsettled escrow, reserving the amount on the
/// escrow's spending cap. Checks, in this order: sender is the client (`ENotClient`), not
/// settled (`EEscrowSettled`), the escrow's cap (`EWrongSpendingCap`), then the cap's
/// room this epoch (`spending_cap::ESpendingCapExceeded`; an amount of 0 always fits).
/// The claims made since the escrow last reported are counted on the cap first, so those
/// of past epochs no longer take room.
public fun top_up(
    escrow: &mut Escrow,
    cap: &mut SpendingCap,
    coin: Coin<SUI>,
    ctx: &TxContext,
) {
    escrow.check_version();
    cap.check_version();
    assert!(ctx.sender() == escrow.client, ENotClient);
    assert!(!escrow.settled, EEscrowSettled);
    escrow.assert_spending_cap(cap);
    let amount = coin.value();
    escrow.report_claims(cap, ctx);
    cap.reserve(amount, ctx);
    escrow.reserved = escrow.reserved + amount;
    escrow.funds.join(coin.into_balance());
    escrow.deposited = escrow.deposited + amount;
    event::emit(EscrowToppedUp {
        escrow: object::id(escrow),
        connection: escrow.connection,
        amount,
        deposited: escrow.deposited,
    });
}

// === Settlement (by dtp::transport_control) ===

/// Abort with `EWrongSpendingCap` unless `cap` is the one this escrow is bound to.
public(package) fun assert_spending_cap(escrow: &Escrow, cap: &SpendingCap) {
    assert!(object::id(cap) == escrow.spending_cap, EWrongSpendingCap);
}

/// Return everything left to the client, report the claims not yet reported to `cap`
/// (the escrow's: `EWrongSpendingCap`) and release the refund from it, and mark the
/// escrow settled. Returns the amount refunded (possibly 0, in which case no coin is
/// sent).
public(package) fun refund_remainder(
    escrow: &mut Escrow,
    cap: &mut SpendingCap,
    ctx: &mut TxContext,
): u64 {
    assert!(!escrow.settled, EEscrowSettled);
    escrow.assert_spending_cap(cap);
    escrow.settled = true;
    let amount = escrow.funds.value();
    // what was claimed counts in the epoch it was claimed in; the refund leaves the cap
    escrow.report_claims(cap, ctx);
    let released = cap.release(amount.min(escrow.reserved), ctx);
    escrow.reserved = escrow.reserved - released;
    escrow.refunded = escrow.refunded + amount;
    if (amount > 0) {
        let rest = escrow.funds.withdraw_all();
        transfer::public_transfer(coin::from_balance(rest, ctx), escrow.client);
    };
    event::emit(EscrowRefunded {
        escrow: object::id(escrow),
        connection: escrow.connection,
        client: escrow.client,
        amount,
    });
    amount
}

/// Delete a settled escrow (by `transport_control::destroy`, which checks who may and
/// that the connection is settled). Settlement emptied it: a balance left would abort
/// (`balance::destroy_zero`), so no MIST is ever destroyed with it.
public(package) fun destroy(escrow: Escrow) {
    let Escrow { id, funds, .. } = escrow;
    funds.destroy_zero();
    id.delete();
}

// === The spending cap's counts ===

/// Note `paid` MIST claimed in `epoch` (the claim's own: the cap is not touched).
fun note_claim(escrow: &mut Escrow, paid: u64, epoch: u64) {
    if (epoch != escrow.claim_epoch) {
        escrow.claim_epoch = epoch;
        escrow.claimed_in_epoch = 0;
    };
    escrow.claimed_in_epoch = escrow.claimed_in_epoch + paid;
}

/// Report to `cap` the claims made since the last report: before settlement
/// `reserved - funds` (what was paid in and left by claims the cap has not counted), the
/// latest of them -- up to `claimed_in_epoch` -- made in `claim_epoch`. Afterwards
/// `reserved == funds`.
fun report_claims(escrow: &mut Escrow, cap: &mut SpendingCap, ctx: &TxContext) {
    let funds = escrow.funds.value();
    if (escrow.reserved <= funds) return;
    let unreported = escrow.reserved - funds;
    cap.count_claims(unreported, escrow.claim_epoch, escrow.claimed_in_epoch, ctx);
    escrow.reserved = funds;
}

// === Receipt bytes and keys ===

/// The bytes a client signs for a receipt of `package`'s `escrow` paying for
/// `connection` (layout in the module documentation).
public fun receipt_message(
    package: address,
    escrow: ID,
    connection: ID,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    nonce: u64,
): vector<u8> {
    let mut message = bcs::to_bytes(&RECEIPT_DOMAIN);
    message.append(bcs::to_bytes(&package));
    message.append(bcs::to_bytes(&escrow));
    message.append(bcs::to_bytes(&connection));
    message.append(bcs::to_bytes(&total_bytes));
    message.append(bcs::to_bytes(&total_requests));
    message.append(bcs::to_bytes(&total_amount));
    message.append(bcs::to_bytes(&nonce));
    message
}

/// This package's original ID (its first version's, which its types keep across
/// upgrades): what every receipt names. Read from the package's own type, `Escrow`, with
/// the `type_name` functions of every framework since Sui 1.45 (later ones rename them
/// `with_original_ids` and `address_string`, and warn of these names as deprecated).
public fun receipt_package(): address {
    let escrow_type = type_name::get_with_original_ids<Escrow>();
    let address_hex = escrow_type.get_address();
    sui::address::from_ascii_bytes(address_hex.as_bytes())
}

/// The Sui address of an Ed25519 public key: blake2b256(0x00 || key).
public fun ed25519_address(public_key: &vector<u8>): address {
    let mut preimage = vector[ED25519_FLAG];
    preimage.append(*public_key);
    sui::address::from_bytes(hash::blake2b256(&preimage))
}

// === Reading ===

public fun connection(escrow: &Escrow): ID { escrow.connection }

public fun client(escrow: &Escrow): address { escrow.client }

public fun client_public_key(escrow: &Escrow): vector<u8> { escrow.client_public_key }

public fun server(escrow: &Escrow): address { escrow.server }

public fun spending_cap(escrow: &Escrow): ID { escrow.spending_cap }

/// This escrow's part of its spending cap's `outstanding`.
public fun reserved(escrow: &Escrow): u64 { escrow.reserved }

/// The epoch of the latest claim (the open's epoch before any).
public fun claim_epoch(escrow: &Escrow): u64 { escrow.claim_epoch }

/// MIST claimed during `claim_epoch`.
public fun claimed_in_epoch(escrow: &Escrow): u64 { escrow.claimed_in_epoch }

public fun sla(escrow: &Escrow): Sla { escrow.sla }

/// MIST currently held.
public fun balance(escrow: &Escrow): u64 { escrow.funds.value() }

public fun deposited(escrow: &Escrow): u64 { escrow.deposited }

public fun claimed(escrow: &Escrow): u64 { escrow.claimed }

public fun refunded(escrow: &Escrow): u64 { escrow.refunded }

public fun latest_nonce(escrow: &Escrow): u64 { escrow.latest_nonce }

public fun is_settled(escrow: &Escrow): bool { escrow.settled }

// === Test support ===

/// Object IDs in `sui::test_scenario` are derived by the VM, so they cannot be known when
/// fixed test signatures are made offline. Tests pin the connection ID with this.
#[test_only]
public fun set_connection_for_testing(escrow: &mut Escrow, connection: ID) {
    escrow.connection = connection;
}

/// `claim`, for a receipt signed for the escrow ID `signed_for` in place of the escrow's
/// own, which the tests cannot know when fixed signatures are made offline (as the
/// connection ID above). Every check and effect is `claim`'s.
#[test_only]
public fun claim_for_testing(
    escrow: &mut Escrow,
    signed_for: ID,
    total_bytes: u64,
    total_requests: u64,
    total_amount: u64,
    nonce: u64,
    signature: vector<u8>,
    ctx: &mut TxContext,
): u64 {
    escrow.claim_signed_for(
        signed_for,
        total_bytes,
        total_requests,
        total_amount,
        nonce,
        signature,
        ctx,
    )
}

// === Versions (docs/escrow.md "Versions") ===

/// The package version `escrow` was made by or last migrated to.
public fun package_version(escrow: &Escrow): u64 { escrow.version }

/// Abort with `version::EWrongVersion` unless `escrow` is of this package's version.
public(package) fun check_version(escrow: &Escrow) { version::check(escrow.version) }

/// The admin migrates `escrow` to this package's version after an upgrade (only
/// forward: `version::ENotUpgrade`). Event `version::ObjectMigrated`.
public fun migrate(_: &AdminCap, escrow: &mut Escrow) {
    escrow.version = version::migrate(object::id(escrow), escrow.version);
}

#[test_only]
public fun set_version_for_testing(escrow: &mut Escrow, v: u64) { escrow.version = v; }
