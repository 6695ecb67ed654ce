/// Plain payments: tips, rewards, bounties.
///
/// `pay` sends a coin to an address with a short memo and records it as a
/// `PaymentSent` event, so that both sides (and anyone auditing) can find it by type.
/// Nothing is held: the coin goes straight to the recipient. docs/escrow.md §20.
module dtp::payment;

use sui::coin::Coin;
use sui::event;
use sui::sui::SUI;

// === Errors ===

#[error(code = 230)]
const EZeroPayment: vector<u8> = b"Payment must be positive";
#[error(code = 231)]
const EMemoTooLong: vector<u8> = b"Memo exceeds 256 bytes";

// === Constants ===

/// Longest memo, in bytes: enough for a reference or a short note, and a bound on what
/// every payment's event carries.
const MAX_MEMO_LENGTH: u64 = 256;

// === Events ===

public struct PaymentSent has copy, drop {
    from: address,
    to: address,
    amount: u64,
    memo: vector<u8>,
}

// === Paying ===

/// Send `payment` to `recipient`. Checks, in this order: the amount is positive
/// (`EZeroPayment`), the memo is at most 256 bytes (`EMemoTooLong`).
public fun pay(payment: Coin<SUI>, recipient: address, memo: vector<u8>, ctx: &TxContext) {
    let amount = payment.value();
    assert!(amount > 0, EZeroPayment);
    assert!(memo.length() <= MAX_MEMO_LENGTH, EMemoTooLong);
    transfer::public_transfer(payment, recipient);
    event::emit(PaymentSent { from: ctx.sender(), to: recipient, amount, memo });
}

// === Reading ===

public fun max_memo_length(): u64 { MAX_MEMO_LENGTH }
