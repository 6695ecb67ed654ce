/// Mailboxes for sealed messages: anyone may leave a message for a host; the host reads
/// its `MailDeposited` events later, from a cursor (docs/messaging.md §3).
///
/// The payload is opaque here: a one-way Noise (`N` or `X`) message sealed to the host's
/// Noise static key, so only the host can open it. The ledger only enforces a size cap
/// and that the recipient is a real `Host`; de-duplication (each message seen once) is
/// the recipient's job, by the message id inside the payload.
module dtp::mailbox;

use dtp::host::Host;
use sui::event;

// === Errors ===

#[error(code = 160)]
const EEmptyPayload: vector<u8> = b"Mail payload is empty";
#[error(code = 161)]
const EPayloadTooLarge: vector<u8> = b"Mail payload exceeds the per-message limit";

/// Largest payload per message, in bytes.
/// Sui refuses a pure transaction argument of 16384 bytes or more before any Move
/// code runs, and a `vector<u8>` argument carries a 2-byte length: 16381 is the most
/// a transaction can pass, so it is the bound here too (docs/escrow.md §8).
const MAX_PAYLOAD_LENGTH: u64 = 16_381;

// === Events ===

public struct MailDeposited has copy, drop {
    /// The Host the message is for.
    recipient_host: ID,
    /// The sealed message.
    payload: vector<u8>,
}

// === Entry points ===

/// Leave `payload` (1..16381 bytes) in the mailbox of `host`.
public fun send(host: &Host, payload: vector<u8>, _ctx: &TxContext) {
    host.check_version();
    assert!(payload.length() > 0, EEmptyPayload);
    assert!(payload.length() <= MAX_PAYLOAD_LENGTH, EPayloadTooLarge);
    event::emit(MailDeposited { recipient_host: object::id(host), payload });
}

// === Reading ===

public fun max_payload_length(): u64 { MAX_PAYLOAD_LENGTH }
