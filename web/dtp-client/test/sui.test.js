// src/sui.js without a node: the transactions it builds through @mysten/sui are, byte for
// byte, the ones dtp.ledger.sui's builders make (tests/golden/sui_transactions.json, with
// the fixed inputs of tests/ledger/sui_tx_cases.py), and bad arguments are refused before
// any wallet is asked. Skipped when the optional @mysten/sui is not installed.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { hex } from '../src/bytes.js';
import { ROOT } from './support.js';

let sdk;
try {
  sdk = {
    ...(await import('../src/sui.js')),
    ...(await import('@mysten/sui/keypairs/ed25519')),
  };
} catch (err) {
  if (err.code !== 'ERR_MODULE_NOT_FOUND') throw err;
}

const golden = JSON.parse(readFileSync(join(ROOT, 'tests', 'golden', 'sui_transactions.json'), 'utf8'));
const PACKAGE = `0x${'d7'.repeat(32)}`;
const HOST = { objectId: `0x${'a1'.repeat(32)}`, initialSharedVersion: 11 };
const CAP = { objectId: `0x${'a2'.repeat(32)}`, initialSharedVersion: 12 };
const GAS = [
  { objectId: `0x${'9a'.repeat(32)}`, version: 7, digest: '4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi' },
  { objectId: `0x${'9b'.repeat(32)}`, version: 8, digest: '8qbHbw2BbbTHBW1sbeqakYXVKRQM8Ne7pLK7m6CVfeR' },
];

/** The golden cases' sender and gas (sui_tx_cases.CTX): seed 0..31, two coins, price 1000,
 * budget 10 M MIST. */
async function bytesOf(tx) {
  const sender = sdk.Ed25519Keypair.fromSecretKey(Uint8Array.from({ length: 32 }, (_, i) => i));
  tx.setSender(sender.getPublicKey().toSuiAddress());
  tx.setGasPayment(GAS);
  tx.setGasPrice(1000);
  tx.setGasBudget(10_000_000);
  return hex(await tx.build());
}

describe('sui.js', { skip: sdk === undefined && '@mysten/sui is not installed' }, () => {
  test('spending_cap::create is the Python builder\'s transaction', async () => {
    const tx = sdk.spendingCapTransaction({ packageId: PACKAGE, maxPerEpoch: 1_000_000 });
    assert.equal(await bytesOf(tx), golden.transactions.create_spending_cap);
  });

  test('open_with_session_key is the Python builder\'s transaction', async () => {
    const tx = sdk.openTransaction({
      packageId: PACKAGE,
      host: HOST,
      port: 7,
      cap: CAP,
      sessionPublicKey: Uint8Array.from({ length: 32 }, (_, i) => i),
      deposit: 5000,
    });
    assert.equal(await bytesOf(tx), golden.transactions.open_session_connection);
  });

  test('bad arguments are refused before the wallet is asked', () => {
    const good = { packageId: PACKAGE, host: HOST, port: 7, cap: CAP, sessionPublicKey: new Uint8Array(32), deposit: 5000 };
    assert.throws(() => sdk.openTransaction({ ...good, port: 70000 }), RangeError);
    assert.throws(() => sdk.openTransaction({ ...good, deposit: 0 }), RangeError);
    assert.throws(() => sdk.openTransaction({ ...good, deposit: 2n ** 64n }), RangeError);
    assert.throws(() => sdk.openTransaction({ ...good, sessionPublicKey: new Uint8Array(31) }), TypeError);
    assert.throws(() => sdk.spendingCapTransaction({ packageId: PACKAGE, maxPerEpoch: -1 }), RangeError);
  });

  test('a connection ID becomes the 32-byte cid connect() takes', () => {
    assert.equal(hex(sdk.connectionCid('0x5')), `${'00'.repeat(31)}05`);
    assert.equal(hex(sdk.connectionCid(`0x${'ab'.repeat(32)}`)), 'ab'.repeat(32));
  });
});
