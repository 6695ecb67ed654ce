// A page on the embedded ledger (LocalLedger, docs/web-frontend.md "On the embedded
// ledger"): its HTTP bridge (dtp.ledger.local.bridge) in place of a Sui full node, and
// the signature its transactions take.
//
// A LocalLedger transaction is LocalLedger's own encoding of one Move call, not a Sui
// TransactionData: a wallet's `sui:signTransaction` parses what it signs and refuses it.
// LocalLedger checks a Sui transaction signature all the same -- intent [0, 0, 0], the
// BLAKE2b-256 digest of intent || bytes, serialized as flag 0x00 || Ed25519 signature ||
// public key -- so a page signs its transactions with a key it holds (a test wallet's,
// `localTransactionSigner`), as the Python side's identities do. On Sui the wallet
// signs (sui.js).

import { ed25519 } from '@noble/curves/ed25519.js';
import { blake2b } from '@noble/hashes/blake2.js';
import { concat, fromHex, hex } from './bytes.js';
import { DTPError } from './errors.js';
import { ed25519Signer } from './identity.js';

const INTENT_TRANSACTION = Uint8Array.of(0, 0, 0);
const ED25519_FLAG = 0x00;

/** What the bridge refused: `name` is the error's kind (the ledger's, e.g.
 * FirewallDenied, WrongSigner; NotFound; TooLarge), `status` the HTTP status. */
export class BridgeError extends DTPError {
  constructor(name, message, status) {
    super(message);
    this.name = name;
    this.status = status;
  }
}

/** The serialized Sui signature of LocalLedger transaction bytes by the Ed25519 key of
 * `seed` (32 bytes or hex): flag 0x00 || signature over BLAKE2b-256([0, 0, 0] || tx) ||
 * public key, 97 bytes. */
export function signLocalTransaction(seed, txBytes) {
  const secret = typeof seed === 'string' ? fromHex(seed.startsWith('0x') ? seed.slice(2) : seed) : seed;
  if (!(secret instanceof Uint8Array) || secret.length !== 32) throw new TypeError('an Ed25519 seed is 32 bytes');
  const digest = blake2b(concat(INTENT_TRANSACTION, txBytes), { dkLen: 32 });
  return concat(Uint8Array.of(ED25519_FLAG), ed25519.sign(digest, secret), ed25519.getPublicKey(secret));
}

/** A test wallet on LocalLedger from an Ed25519 seed: a DTP signer ({address,
 * signPersonalMessage}: the identity proof) that also signs LocalLedger transactions
 * (`signTransaction(txBytes)`). */
export function localTransactionSigner(seed) {
  const secret = typeof seed === 'string' ? fromHex(seed.startsWith('0x') ? seed.slice(2) : seed) : seed;
  const signer = ed25519Signer(secret);
  return {
    ...signer,
    async signTransaction(txBytes) {
      return signLocalTransaction(secret, txBytes);
    },
  };
}

/**
 * The ledger bridge at `base` (the page's origin, by default: `''`): JSON over HTTP.
 *
 *   info()                      {package, ...what the host adds: host, port, sla, url, serverKey}
 *   build(sender, call)         LocalLedger transaction bytes (call: {call, ...arguments})
 *   execute(tx, signature)      {value, events: [{name, fields}]}
 *   transact(wallet, call)      build, wallet.signTransaction, execute
 *   escrow(id), connection(id)  the objects, as the ledger holds them
 *   faucet(address)             test SUI, where the bridge has a faucet
 *   openEscrow(wallet, {host, port, deposit, session, cap?, maxPerEpoch?})
 *                               spending_cap::create (unless `cap`), then
 *                               transport_control::open_with_session_key:
 *                               {connection, escrow, cap, deposit}
 */
export class LocalLedgerBridge {
  constructor(base = '', { fetch: fetchImpl = globalThis.fetch } = {}) {
    this.base = base.replace(/\/$/, '');
    this.fetch = fetchImpl;
  }

  async call(name, body) {
    const response = await this.fetch.call(globalThis, `${this.base}/ledger/${name}`, body === undefined
      ? {}
      : { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const answer = await response.json();
    if (!response.ok) throw new BridgeError(answer.error ?? 'BridgeError', answer.message ?? response.statusText, response.status);
    return answer;
  }

  info() {
    return this.call('info');
  }

  async build(sender, call) {
    const { tx } = await this.call('build', { sender, ...call });
    return fromHex(tx);
  }

  execute(tx, signature) {
    return this.call('execute', { tx: hex(tx), signature: hex(signature) });
  }

  /** Builds a transaction for `wallet` ({address, signTransaction}), has it signed, runs it. */
  async transact(wallet, call) {
    const tx = await this.build(wallet.address, call);
    return this.execute(tx, await wallet.signTransaction(tx));
  }

  escrow(id) {
    return this.call('escrow', { id });
  }

  connection(id) {
    return this.call('connection', { id });
  }

  faucet(address) {
    return this.call('faucet', { address });
  }

  async openEscrow(wallet, { host, port, deposit, session, cap = null, maxPerEpoch = null }) {
    let capId = cap;
    if (capId === null) {
      const made = await this.transact(wallet, {
        call: 'spending_cap::create',
        max_per_epoch: String(maxPerEpoch ?? BigInt(deposit) * 10n),
      });
      capId = made.value;
    }
    const opened = await this.transact(wallet, {
      call: 'transport_control::open_with_session_key',
      host,
      port,
      cap: capId,
      public_key: hex(session.publicKey),
      deposit: String(deposit),
    });
    const event = opened.events.find((e) => e.name === 'ConnectionOpened');
    return { connection: opened.value, escrow: event.fields.escrow, cap: capId, deposit };
  }
}
