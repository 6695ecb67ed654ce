// Opening a DTP connection's escrow on Sui from the page (docs/escrow.md sections 4 and
// 6.2; docs/web-frontend.md, "How the page opens the escrow"): the page builds the
// transactions with Mysten's TypeScript SDK and the user's wallet signs and executes them,
// through the Sui wallet standard's `sui:signAndExecuteTransaction`.
//
//   spending_cap::create(max_per_epoch)                    once per wallet (a shared object)
//   SplitCoins(GasCoin, [deposit]);
//   transport_control::open_with_session_key(&host, port, &mut cap,
//       session_public_key, coin, &clock)                  once per connection
//
// The same calls, with the same arguments, as dtp.ledger.sui's builders make
// (create_spending_cap, open_session_connection). The SDK is a peer dependency of this
// package: only a page that opens escrows on Sui imports this module and needs it.

import { bcs } from '@mysten/sui/bcs';
import { Transaction } from '@mysten/sui/transactions';
import { toBase64 } from '@mysten/sui/utils';
import { fromHex, hex } from './bytes.js';

// (connectionCid lives in ids.js, which needs no SDK: a page on LocalLedger imports it
// from the package's main module; it is re-exported here as before)
export { connectionCid } from './ids.js';

/** The Clock's ID (0x6), shared since genesis (initial shared version 1). */
export const CLOCK = { objectId: '0x6', initialSharedVersion: 1 };

// the head of transport_control::ConnectionOpened (move/dtp/sources/transport_control.move):
// BCS reads fields in order, so the SLA and what follows it are not needed to reach these
const ConnectionOpenedHead = bcs.struct('ConnectionOpened', {
  connection: bcs.Address,
  host: bcs.Address,
  port: bcs.u16(),
  client: bcs.Address,
  server: bcs.Address,
  escrow: bcs.Address,
  deposit: bcs.u64(),
});
const SpendingCapCreated = bcs.struct('SpendingCapCreated', {
  cap: bcs.Address,
  owner: bcs.Address,
  max_per_epoch: bcs.u64(),
});

/** A ledger step that failed: the wallet or the node refused the transaction, or it
 * aborted. For a Move abort, `abort` is `{module, code, name}`: the module and abort code
 * (docs/escrow.md section 10's table, e.g. host 8) and the error constant when the node
 * names it (`EFirewallDenied`); `digest` is the failed transaction's. */
export class SuiLedgerError extends Error {
  constructor(message, { digest, cause, abort } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'SuiLedgerError';
    this.digest = digest;
    this.abort = abort;
  }
}

function moveAbort(error) {
  const abort = error?.MoveAbort;
  if (!abort) return undefined;
  return {
    module: abort.location?.module,
    code: Number(abort.cleverError?.errorCode ?? abort.abortCode),
    name: abort.cleverError?.constantName,
  };
}

function u64(value, what) {
  const n = BigInt(value);
  if (n <= 0n || n >= 1n << 64n) throw new RangeError(`${what} is a positive u64 of MIST, got ${value}`);
  return n;
}

function sharedRef(ref, mutable) {
  return { objectId: ref.objectId, initialSharedVersion: ref.initialSharedVersion, mutable };
}

/** `spending_cap::create(max_per_epoch)`: the wallet's spending cap (docs/escrow.md 4). */
export function spendingCapTransaction({ packageId, maxPerEpoch, gasBudget }) {
  const tx = new Transaction();
  tx.moveCall({
    target: `${packageId}::spending_cap::create`,
    arguments: [tx.pure.u64(u64(maxPerEpoch, 'maxPerEpoch'))],
  });
  if (gasBudget !== undefined) tx.setGasBudget(gasBudget);
  return tx;
}

/** `SplitCoins(GasCoin, [deposit])` then `transport_control::open_with_session_key(&host,
 * port, &mut cap, session_public_key, coin, &clock)` (docs/escrow.md 6.2). `host` and
 * `cap` are `{objectId, initialSharedVersion}` (both are shared objects: the Host read
 * only, so that opens of one host run side by side). */
export function openTransaction({ packageId, host, port, cap, sessionPublicKey, deposit, gasBudget }) {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new RangeError(`port is a u16, got ${port}`);
  const key = typeof sessionPublicKey === 'string' ? fromHex(sessionPublicKey) : sessionPublicKey;
  if (!(key instanceof Uint8Array) || key.length !== 32) {
    throw new TypeError('sessionPublicKey is a 32-byte Ed25519 public key');
  }
  const tx = new Transaction();
  // the inputs in the order dtp.ledger.sui's builder makes them, so that both build the
  // same bytes (test/sui.test.js checks it against tests/golden/sui_transactions.json)
  const hostArg = tx.sharedObjectRef(sharedRef(host, false));
  const portArg = tx.pure.u16(port);
  const capArg = tx.sharedObjectRef(sharedRef(cap, true));
  const keyArg = tx.pure.vector('u8', Array.from(key));
  const [coin] = tx.splitCoins(tx.gas, [tx.pure.u64(u64(deposit, 'deposit'))]);
  tx.moveCall({
    target: `${packageId}::transport_control::open_with_session_key`,
    arguments: [hostArg, portArg, capArg, keyArg, coin, tx.sharedObjectRef(sharedRef(CLOCK, false))],
  });
  if (gasBudget !== undefined) tx.setGasBudget(gasBudget);
  return tx;
}

/** `{objectId, initialSharedVersion}` of the shared object `objectId`, read from the node. */
export async function sharedObject(client, objectId) {
  const { object } = await client.core.getObject({ objectId });
  const shared = object.owner?.Shared;
  if (!shared) throw new SuiLedgerError(`${objectId} is not a shared object`);
  return { objectId: object.objectId, initialSharedVersion: Number(shared.initialSharedVersion) };
}

function typeName(eventType) {
  return eventType.split('<', 1)[0].split('::').slice(1).join('::');
}

/**
 * Opens escrows for one wallet on one Sui network. `client` is a `SuiGrpcClient` (or any
 * client of the SDK's core API) on the network the provider's Host lives on; `wallet` has
 * the wallet standard's `signAndExecuteTransaction({transaction, account, chain})` (a
 * wallet-standard wallet's `sui:signAndExecuteTransaction` feature, or `testSuiWallet`),
 * and `address`, the account's address.
 */
export class SuiEscrows {
  constructor({ client, wallet, packageId, chain = 'sui:localnet', gasBudget }) {
    this.client = client;
    this.wallet = wallet;
    this.packageId = packageId;
    this.chain = chain;
    this.gasBudget = gasBudget;
  }

  /** Has the wallet sign and execute `tx`; resolves to the executed transaction, with its
   * events, once the node has it; SuiLedgerError if it failed. */
  async execute(tx, what) {
    tx.setSenderIfNotSet(this.wallet.address);
    let digest;
    try {
      ({ digest } = await this.wallet.signAndExecuteTransaction({
        transaction: tx,
        account: this.wallet.account ?? { address: this.wallet.address },
        chain: this.chain,
      }));
    } catch (err) {
      // (a transaction the node's simulation saw abort, while the SDK picked its gas:
      // refused before it was signed, the abort named as an executed one's is)
      throw new SuiLedgerError(`${what}: ${err.message}`, { cause: err, abort: moveAbort(err.executionError) });
    }
    // the wallet answers with the digest and the effects' BCS; the events are read back
    // from the node (which may index the transaction a moment after it ran)
    let done;
    try {
      done = await this.client.core.waitForTransaction({ digest, include: { effects: true, events: true } });
    } catch (err) {
      // executed, perhaps: the digest lets the page find the deposit again
      throw new SuiLedgerError(`${what}: ${digest} not read back: ${err.message}`, { digest, cause: err });
    }
    const executed = done.Transaction ?? done.FailedTransaction;
    if (!executed.effects.status.success) {
      const error = executed.effects.status.error;
      throw new SuiLedgerError(`${what}: ${error?.message ?? JSON.stringify(error)}`, {
        digest,
        abort: moveAbort(error),
      });
    }
    return executed;
  }

  event(executed, name) {
    const found = executed.events?.find((e) => typeName(e.eventType) === name);
    if (!found) throw new SuiLedgerError(`no ${name} event in ${executed.digest}`, { digest: executed.digest });
    return found.bcs;
  }

  /** `spending_cap::create`: resolves to the new cap's `{objectId, initialSharedVersion}`
   * (keep it: one cap serves every later connection of the wallet). */
  async createSpendingCap(maxPerEpoch) {
    const tx = spendingCapTransaction({ packageId: this.packageId, maxPerEpoch, gasBudget: this.gasBudget });
    const executed = await this.execute(tx, 'spending_cap::create');
    const { cap } = SpendingCapCreated.parse(this.event(executed, 'spending_cap::SpendingCapCreated'));
    return sharedObject(this.client, cap);
  }

  /**
   * Opens a connection to port `port` of the Host `host` (its object ID) with `deposit`
   * MIST in escrow, whose receipts `session` (receipt.js's `sessionKey()`) signs; `cap` is
   * the wallet's spending cap (an ID or `{objectId, initialSharedVersion}`), or made here
   * with `maxPerEpoch` when absent. Resolves to what the DTP connect and the payment need:
   * `{connection, escrow, cap, deposit, digest}` (IDs as 0x hex).
   */
  async openEscrow({ host, port, deposit, session, cap, maxPerEpoch }) {
    if (BigInt(deposit) > BigInt(Number.MAX_SAFE_INTEGER)) {
      // (the payment counts MIST as numbers: refused before any money moves)
      throw new RangeError(`a deposit above ${Number.MAX_SAFE_INTEGER} MIST is not counted exactly here`);
    }
    let capRef = cap;
    if (capRef === undefined) {
      capRef = await this.createSpendingCap(maxPerEpoch ?? BigInt(deposit) * 10n);
    } else if (typeof capRef === 'string') {
      capRef = await sharedObject(this.client, capRef);
    }
    const hostRef = typeof host === 'string' ? await sharedObject(this.client, host) : host;
    const tx = openTransaction({
      packageId: this.packageId,
      host: hostRef,
      port,
      cap: capRef,
      sessionPublicKey: session.publicKey,
      deposit,
      gasBudget: this.gasBudget,
    });
    const executed = await this.execute(tx, 'transport_control::open_with_session_key');
    const opened = ConnectionOpenedHead.parse(this.event(executed, 'transport_control::ConnectionOpened'));
    return {
      connection: opened.connection,
      escrow: opened.escrow,
      cap: capRef,
      deposit: Number(opened.deposit),
      digest: executed.digest,
    };
  }
}

/** The 32-byte connection ID of `connection` (0x hex), as `connect({cid})` takes it. */

/**
 * A test key standing in for a Sui wallet (an Ed25519 keypair of the SDK): its
 * `signAndExecuteTransaction` does what a wallet does with the page's transaction (fills
 * in the gas, signs it, executes it) and answers as the wallet standard says,
 * `{bytes, signature, digest, effects}` (base64 BCS).
 *
 * `gas`: 'sdk' (the default) leaves what the page did not set of the gas to the SDK's
 * build, as a wallet does: its gRPC client asks the node to simulate the transaction
 * (SimulateTransaction, with gas selection), which picks the price, the coins and a
 * budget from what the run used, and a transaction that aborts is refused there, before
 * it is signed; 'wallet' picks them here (the reference gas price, its largest SUI coin,
 * `gasBudget` unless the page set one) and leaves nothing to the simulation.
 */
export function testSuiWallet(keypair, client, { gas = 'sdk', gasBudget = 50_000_000 } = {}) {
  if (gas !== 'sdk' && gas !== 'wallet') throw new TypeError(`gas is 'sdk' or 'wallet', got ${gas}`);
  const address = keypair.getPublicKey().toSuiAddress();
  return {
    address,
    publicKeyHex: hex(keypair.getPublicKey().toRawBytes()),
    async signAndExecuteTransaction({ transaction }) {
      const tx = Transaction.from(await transaction.toJSON());
      tx.setSenderIfNotSet(address);
      const data = tx.getData();
      if (gas === 'wallet' && !data.gasData.budget) tx.setGasBudget(gasBudget);
      if (gas === 'wallet' && !data.gasData.price) {
        const { referenceGasPrice } = await client.core.getReferenceGasPrice();
        tx.setGasPrice(BigInt(referenceGasPrice));
      }
      if (gas === 'wallet' && !data.gasData.payment) {
        const { objects } = await client.core.listCoins({ owner: address, coinType: '0x2::sui::SUI' });
        if (objects.length === 0) throw new SuiLedgerError(`${address} has no SUI to pay gas with`);
        const coin = objects.reduce((a, b) => (BigInt(b.balance) > BigInt(a.balance) ? b : a));
        tx.setGasPayment([{ objectId: coin.objectId, version: coin.version, digest: coin.digest }]);
      }
      const bytes = await tx.build({ client });
      const { signature } = await keypair.signTransaction(bytes);
      const result = await client.core.executeTransaction({
        transaction: bytes,
        signatures: [signature],
        include: { effects: true },
      });
      const executed = result.Transaction ?? result.FailedTransaction;
      return {
        bytes: toBase64(bytes),
        signature,
        digest: executed.digest,
        effects: executed.effects?.bcs === undefined ? undefined : toBase64(executed.effects.bcs),
      };
    },
  };
}
