// Receipts for a paid service (docs/escrow.md section 6): the 143-byte message a receipt
// key signs (raw Ed25519, RFC 8032: no intent, no pre-hash), its 193-byte in-band encoding
// (the RECEIPT frame's payload), the fee rule, and a Payment that signs cumulative receipts
// for a connection's usage -- one per request, and whenever the server asks (an empty
// RECEIPT frame).
//
// The key that signs is the escrow's client key: the ledger checks every receipt against
// it when the server claims. A wallet cannot make these signatures (its personal-message
// signing hashes the bytes behind Sui's intent first), which is why docs/escrow.md 6.2
// designs a session key the wallet authorises once.

import { ed25519 } from '@noble/curves/ed25519.js';
import { concat, fromHex, hex, u64le, utf8 } from './bytes.js';
import { DTPError } from './errors.js';

export const RECEIPT_VERSION = 2;
export const RECEIPT_TAG = utf8('DTP-RECEIPT-V2');
export const RECEIPT_MESSAGE_SIZE = 143;
export const RECEIPT_ENCODED_SIZE = 193;
const U64_MAX = (1n << 64n) - 1n;

/** A payment the deposit cannot cover, or a receipt that cannot be made. */
export class PaymentRequired extends DTPError {}

/** The 32 bytes of an object ID given as 0x + hex (short forms left-padded, as Sui does). */
export function objectIdBytes(id) {
  if (id instanceof Uint8Array) {
    if (id.length !== 32) throw new TypeError('an object ID is 32 bytes');
    return id;
  }
  const clean = String(id).startsWith('0x') ? String(id).slice(2) : String(id);
  if (clean.length === 0 || clean.length > 64 || /[^0-9a-fA-F]/.test(clean)) throw new TypeError(`not an object ID: ${id}`);
  return fromHex(clean.padStart(64, '0'));
}

function u64(value, what) {
  const n = BigInt(value);
  if (n < 0n || n > U64_MAX) throw new RangeError(`${what} must be in 0 ..= 2^64 - 1, got ${value}`);
  return n;
}

/** `ceil(bytes * price_per_kib / 1024) + requests * price_per_request` (docs/escrow.md 3),
 * exact, as a BigInt. `sla`: {pricePerKib, pricePerRequest} (numbers, BigInts or strings). */
export function fee(sla, totalBytes, totalRequests) {
  const bytes = u64(totalBytes, 'total_bytes');
  const requests = u64(totalRequests, 'total_requests');
  return (bytes * BigInt(sla.pricePerKib) + 1023n) / 1024n + requests * BigInt(sla.pricePerRequest);
}

/** The scope a receipt pays: {package, escrow, connection} as object IDs, normalized to
 * bytes. The package is the dtp package's original ID (the ledger's `package_id`). */
function scopeBytes(scope) {
  return [objectIdBytes(scope.package), objectIdBytes(scope.escrow), objectIdBytes(scope.connection)];
}

function totalsBytes({ totalBytes, totalRequests, totalAmount, nonce }) {
  const n = u64(nonce, 'nonce');
  // nonces start at 1: a claim needs nonce > latest_nonce, which is 0 before any claim
  if (n === 0n) throw new RangeError('a receipt nonce starts at 1');
  return concat(
    u64le(u64(totalBytes, 'total_bytes')),
    u64le(u64(totalRequests, 'total_requests')),
    u64le(u64(totalAmount, 'total_amount')),
    u64le(n),
  );
}

/** The 143 bytes a receipt key signs: ULEB128(14) || "DTP-RECEIPT-V2" || package ||
 * escrow || connection || total_bytes || total_requests || total_amount || nonce. */
export function receiptMessage(scope, totals) {
  return concat(Uint8Array.of(RECEIPT_TAG.length), RECEIPT_TAG, ...scopeBytes(scope), totalsBytes(totals));
}

/** The RECEIPT frame's payload: version 0x02 || the message without its tag || signature. */
export function encodeReceipt(scope, totals, signature) {
  if (signature.length !== 64) throw new TypeError('an Ed25519 signature is 64 bytes');
  return concat(Uint8Array.of(RECEIPT_VERSION), ...scopeBytes(scope), totalsBytes(totals), signature);
}

/** A receipt key from a 32-byte Ed25519 seed: {publicKey, sign(message)} (raw RFC 8032). */
export function receiptKey(seed) {
  const secret = typeof seed === 'string' ? fromHex(seed) : seed;
  if (secret.length !== 32) throw new TypeError('an Ed25519 seed is 32 bytes');
  const publicKey = ed25519.getPublicKey(secret);
  return {
    publicKey,
    publicKeyHex: hex(publicKey),
    sign(message) {
      return ed25519.sign(message, secret);
    },
  };
}

/** A fresh ephemeral receipt key (a session key, docs/escrow.md 6.2): random seed from the
 * platform's CSPRNG, never stored by this package. */
export function sessionKey() {
  const seed = new Uint8Array(32);
  globalThis.crypto.getRandomValues(seed);
  return receiptKey(seed);
}

/** Signs a receipt: its encoding, ready for a RECEIPT frame. */
export function signReceipt(key, scope, totals) {
  return encodeReceipt(scope, totals, key.sign(receiptMessage(scope, totals)));
}

/**
 * The client side of a paid connection: cumulative receipts for the connection's usage,
 * signed with `key` (the escrow's client key), never beyond `deposit`.
 *
 * Options: `scope` ({package, escrow, connection}), `sla` ({pricePerKib, pricePerRequest}),
 * `deposit` (MIST), `key` ({sign(message)}), `onreceipt` (called with each receipt sent:
 * {totalBytes, totalRequests, totalAmount, nonce}). It answers the server's empty RECEIPT
 * frames (docs/escrow.md 6.1: "send a receipt now").
 */
export class Payment {
  constructor(connection, { scope, sla, deposit, key, onreceipt = null }) {
    if (!scope || !sla || deposit === undefined || !key) throw new TypeError('a Payment needs scope, sla, deposit and key');
    this.connection = connection;
    this.scope = scope;
    this.sla = sla;
    this.deposit = u64(deposit, 'the deposit');
    this.key = key;
    this.onreceipt = onreceipt;
    this.nonce = 0n;
    this.paid = null; // the latest receipt sent
    connection.onreceipt = (body) => {
      if (body.length === 0) this.pay();
    };
  }

  /** What the usage so far costs (MIST, a BigInt). */
  owed() {
    const { bytes, requests } = this.connection.usage;
    return fee(this.sla, bytes, requests);
  }

  /** Signs and sends a receipt for all the usage so far, unless the latest one covers it;
   * returns the receipt's totals (or the latest's). A usage the deposit cannot pay is
   * refused (PaymentRequired): the receipt for it could never be claimed. */
  pay() {
    const { bytes, requests } = this.connection.usage;
    const amount = fee(this.sla, bytes, requests);
    if (this.paid && this.paid.totalBytes === BigInt(bytes) && this.paid.totalRequests === BigInt(requests)) return this.paid;
    if (amount > this.deposit) {
      throw new PaymentRequired(`the usage costs ${amount} MIST, the deposit is ${this.deposit}`);
    }
    this.nonce += 1n;
    const totals = { totalBytes: BigInt(bytes), totalRequests: BigInt(requests), totalAmount: amount, nonce: this.nonce };
    this.connection.sendReceipt(signReceipt(this.key, this.scope, totals));
    this.paid = totals;
    this.onreceipt?.(totals);
    return totals;
  }

  /** One request: a new stream carrying `body`, paid for as soon as it is sent (the
   * request is what the price is for), its whole answer read. Refused before anything is
   * sent when the deposit cannot pay one more request. */
  async request(body) {
    const { bytes, requests } = this.connection.usage;
    if (fee(this.sla, bytes + body.length, requests + 1) > this.deposit) {
      throw new PaymentRequired('the deposit cannot pay for another request');
    }
    const stream = await this.connection.openStream();
    await stream.end(body);
    this.pay();
    const answer = await stream.readAll();
    return answer;
  }

  /** The final receipt (for what the answers added), then close. */
  async close(code = 0, reason = '') {
    try {
      if (this.connection.state !== 'closed') this.pay();
    } catch (err) {
      if (!(err instanceof PaymentRequired)) throw err;
    }
    return this.connection.close(code, reason);
  }
}
