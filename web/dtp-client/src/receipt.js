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
import { objectIdBytes } from './ids.js';
import { SODIUM } from './record.js';

export { objectIdBytes };

export const RECEIPT_VERSION = 2;
export const RECEIPT_TAG = utf8('DTP-RECEIPT-V2');
export const RECEIPT_MESSAGE_SIZE = 143;
export const RECEIPT_ENCODED_SIZE = 193;
const U64_MAX = (1n << 64n) - 1n;

/** A payment the deposit cannot cover, or a receipt that cannot be made. */
export class PaymentRequired extends DTPError {}

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

/** A receipt key from a 32-byte Ed25519 seed: {publicKey, sign(message)} (raw RFC 8032,
 * deterministic: the same signature whoever computes it). It signs with libsodium where
 * the page loaded it (record.js), else with @noble/curves, which recomputes the key's
 * scalar and public point at every signature: about 2 ms a receipt in node under load,
 * against about 0.1 ms (`sodium: false` takes @noble/curves' path). */
export function receiptKey(seed, { sodium = true } = {}) {
  const secret = typeof seed === 'string' ? fromHex(seed) : seed;
  if (secret.length !== 32) throw new TypeError('an Ed25519 seed is 32 bytes');
  if (sodium && SODIUM !== null) {
    const pair = SODIUM.crypto_sign_seed_keypair(secret);
    const secretKey = pair.privateKey;
    return {
      publicKey: pair.publicKey,
      publicKeyHex: hex(pair.publicKey),
      sign(message) {
        return SODIUM.crypto_sign_detached(message, secretKey);
      },
    };
  }
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

/** How long (ms) usage may stay unsigned before a Payment signs for it, whatever its
 * amount: the time bound of `every` (docs/web-frontend.md, "Paying per call"). */
export const EVERY_MS = 1000;

/**
 * The client side of a paid connection: cumulative receipts for the connection's usage,
 * signed with `key` (the escrow's client key), never beyond `deposit`.
 *
 * Options: `scope` ({package, escrow, connection}), `sla` ({pricePerKib,
 * pricePerRequest, minDeposit?}), `deposit` (MIST), `key` ({sign(message)}), `onreceipt`
 * (called with each receipt sent: {totalBytes, totalRequests, totalAmount, nonce}),
 * `every` ({amount, ms}: the bound on what is left unsigned, below).
 *
 * A receipt covers every call made before it: the server serves on credit -- up to its
 * allowance, the SLA's `minDeposit` unless the provider set another (docs/escrow.md
 * 6.1) -- and the page signs once the usage no receipt covers reaches `every.amount`
 * MIST (by default a quarter of `sla.minDeposit`, as the Python client's meter: the rest
 * of the credit carries the calls made while the server stores the receipt; 0, or no
 * `minDeposit`: a receipt with every call), or
 * `every.ms` after the first call it left unsigned (EVERY_MS), whichever comes first.
 * The server never serves more than the receipts plus its allowance: past it, it pauses
 * the connection and asks for a receipt (an empty RECEIPT frame), which this answers at
 * once. A refused call's price never enters a receipt here: the transport meters the
 * streams and bytes the server took.
 */
export class Payment {
  constructor(connection, { scope, sla, deposit, key, onreceipt = null, every = {} }) {
    if (!scope || !sla || deposit === undefined || !key) throw new TypeError('a Payment needs scope, sla, deposit and key');
    this.connection = connection;
    this.scope = scope;
    this.sla = sla;
    this.deposit = u64(deposit, 'the deposit');
    this.key = key;
    this.onreceipt = onreceipt;
    const credit = sla.minDeposit === undefined || sla.minDeposit === null ? 0n : u64(sla.minDeposit, 'sla.minDeposit');
    /** MIST of usage left unsigned at most (0: a receipt with every call). */
    this.everyAmount = every.amount === undefined ? credit / 4n : u64(every.amount, 'every.amount');
    /** How long (ms) usage is left unsigned at most. */
    this.everyMs = every.ms === undefined ? EVERY_MS : Number(every.ms);
    if (!(this.everyMs >= 0) || !Number.isFinite(this.everyMs)) throw new RangeError(`every.ms must be a number of ms >= 0, got ${every.ms}`);
    this.nonce = 0n;
    this.paid = null; // the latest receipt sent
    this._timer = null; // signs what is unsigned once every.ms has passed
    connection.onreceipt = (body) => {
      if (body.length === 0) this._payNow();
    };
  }

  /** What the usage so far costs (MIST, a BigInt). */
  owed() {
    const { bytes, requests } = this.connection.usage;
    return fee(this.sla, bytes, requests);
  }

  /** MIST of the usage so far no receipt covers. */
  unsigned() {
    return this.owed() - (this.paid ? this.paid.totalAmount : 0n);
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
    this._stopTimer();
    this.nonce += 1n;
    const totals = { totalBytes: BigInt(bytes), totalRequests: BigInt(requests), totalAmount: amount, nonce: this.nonce };
    this.connection.sendReceipt(signReceipt(this.key, this.scope, totals));
    this.paid = totals;
    this.onreceipt?.(totals);
    return totals;
  }

  /** Signs now if the unsigned usage reached `every.amount`, else makes sure a receipt
   * follows within `every.ms` (a call made, an answer read). */
  due() {
    const unsigned = this.unsigned();
    if (unsigned <= 0n) return;
    if (unsigned >= this.everyAmount || this.everyMs === 0) {
      this.pay();
    } else if (this._timer === null) {
      this._timer = setTimeout(() => {
        this._timer = null;
        this._payNow();
      }, this.everyMs);
      // (in node, a pending receipt does not keep the process alive)
      if (typeof this._timer === 'object' && typeof this._timer.unref === 'function') this._timer.unref();
    }
  }

  /** A receipt now, when the connection still takes one (the server asked, or the time
   * bound passed); a usage past the deposit signs nothing (the server's pause ends it). */
  _payNow() {
    if (this.connection.state === 'closed') return;
    try {
      this.pay();
    } catch (err) {
      if (!(err instanceof PaymentRequired)) throw err;
    }
  }

  _stopTimer() {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  /** One request: a new stream carrying `body`, its whole answer read; the receipt that
   * covers it is signed as `every` says (at once by default when the SLA names no
   * `minDeposit`). Refused before anything is sent when the deposit cannot pay one more
   * request. */
  async request(body) {
    const { bytes, requests } = this.connection.usage;
    if (fee(this.sla, bytes + body.length, requests + 1) > this.deposit) {
      throw new PaymentRequired('the deposit cannot pay for another request');
    }
    const stream = await this.connection.openStream();
    await stream.end(body);
    this.due();
    const answer = await stream.readAll();
    if (this.sla.pricePerKib && BigInt(this.sla.pricePerKib) !== 0n) this.due(); // (the answer's bytes)
    return answer;
  }

  /** The final receipt (for what the answers added), then close. */
  async close(code = 0, reason = '') {
    this._stopTimer();
    try {
      if (this.connection.state !== 'closed') this.pay();
    } catch (err) {
      if (!(err instanceof PaymentRequired)) throw err;
    }
    return this.connection.close(code, reason);
  }
}
