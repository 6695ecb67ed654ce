// Receipts (docs/escrow.md section 6): the message, signature and in-band encoding of the
// section's test vector, byte for byte; the fee rule; and a Payment's cumulative receipts
// over a connection's usage, including the server's "send a receipt now".

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ed25519 } from '@noble/curves/ed25519.js';
import { fromHex, hex, readU64le } from '../src/bytes.js';
import {
  Payment, PaymentRequired, RECEIPT_ENCODED_SIZE, RECEIPT_MESSAGE_SIZE, encodeReceipt, fee, objectIdBytes,
  receiptKey, receiptMessage, sessionKey, signReceipt,
} from '../src/receipt.js';
import { ROOT } from './support.js';

/** The `message`, `signature` and `encoded` lines of docs/escrow.md section 6's vector. */
function escrowVector() {
  const text = readFileSync(join(ROOT, 'docs', 'escrow.md'), 'utf8');
  const block = text.slice(text.indexOf('Test vector — package'));
  const line = (name) => fromHex(block.match(new RegExp(`^${name}\\s+([0-9a-f]+)$`, 'm'))[1]);
  return { message: line('message'), signature: line('signature'), encoded: line('encoded') };
}

const SCOPE = {
  package: `0x${hex(Uint8Array.from({ length: 32 }, (_, i) => i))}`,
  escrow: '0xdecaf',
  connection: '0xc0ffee',
};
const TOTALS = { totalBytes: 10240, totalRequests: 4, totalAmount: 120, nonce: 1 };
const SEED = new Uint8Array(32).fill(0x11);

describe('receipts', () => {
  test('the docs/escrow.md vector: message, signature, encoding', () => {
    const vector = escrowVector();
    const key = receiptKey(SEED);
    assert.ok(hex(key.publicKey).startsWith('d04ab232'));
    const message = receiptMessage(SCOPE, TOTALS);
    assert.equal(message.length, RECEIPT_MESSAGE_SIZE);
    assert.equal(hex(message), hex(vector.message));
    assert.equal(hex(key.sign(message)), hex(vector.signature));
    const encoded = signReceipt(key, SCOPE, TOTALS);
    assert.equal(encoded.length, RECEIPT_ENCODED_SIZE);
    assert.equal(hex(encoded), hex(vector.encoded));
  });

  test('nonce 0, a u64 overflow, a short signature and a bad object ID are refused', () => {
    assert.throws(() => receiptMessage(SCOPE, { ...TOTALS, nonce: 0 }), RangeError);
    assert.throws(() => receiptMessage(SCOPE, { ...TOTALS, totalBytes: 1n << 64n }), RangeError);
    assert.throws(() => receiptMessage(SCOPE, { ...TOTALS, totalAmount: -1 }), RangeError);
    assert.throws(() => encodeReceipt(SCOPE, TOTALS, new Uint8Array(63)), TypeError);
    assert.throws(() => objectIdBytes('0xnothex'), TypeError);
    assert.throws(() => objectIdBytes(`0x${'1'.repeat(65)}`), TypeError);
    assert.equal(hex(objectIdBytes('0x1')), `${'0'.repeat(63)}1`);
  });

  test('the fee: ceil(bytes * per_kib / 1024) + requests * per_request (escrow.md 3)', () => {
    const sla = { pricePerKib: 10, pricePerRequest: 5 };
    assert.equal(fee(sla, 0, 0), 0n);
    assert.equal(fee(sla, 1, 0), 1n);
    assert.equal(fee(sla, 1024, 0), 10n);
    assert.equal(fee(sla, 1025, 1), 16n);
    // exact past 2^53
    assert.equal(fee({ pricePerKib: 1024, pricePerRequest: 0 }, (1n << 60n) + 1n, 0), (1n << 60n) + 1n);
  });

  test("libsodium's signatures (where it loaded) are @noble/curves' to the byte", async () => {
    const { SODIUM } = await import('../src/record.js');
    assert.ok(SODIUM !== null, 'libsodium loads in node');
    for (let i = 0; i < 8; i++) {
      const seed = sessionKey().publicKey; // (any 32 bytes)
      const fast = receiptKey(seed);
      const noble = receiptKey(seed, { sodium: false });
      assert.equal(hex(fast.publicKey), hex(noble.publicKey));
      const message = receiptMessage(SCOPE, { ...TOTALS, nonce: i + 1 });
      assert.equal(hex(fast.sign(message)), hex(noble.sign(message)));
    }
    assert.equal(hex(receiptKey(SEED, { sodium: false }).sign(escrowVector().message)), hex(escrowVector().signature));
  });

  test('a session key is fresh each time and signs what verifies under its public key', () => {
    const a = sessionKey();
    const b = sessionKey();
    assert.notEqual(hex(a.publicKey), hex(b.publicKey));
    const message = receiptMessage(SCOPE, TOTALS);
    assert.ok(ed25519.verify(a.sign(message), message, a.publicKey));
  });
});

/** A connection's stand-in: its usage is set by the test, its RECEIPT frames recorded. */
class FakeConnection {
  constructor() {
    this.usage = { bytes: 0, requests: 0 };
    this.sent = [];
    this.state = 'open';
    this.onreceipt = null;
  }

  sendReceipt(encoded) {
    this.sent.push(encoded);
  }

  async close() {
    this.state = 'closed';
  }
}

function decoded(encoded) {
  return {
    bytes: readU64le(encoded, 97),
    requests: readU64le(encoded, 105),
    amount: readU64le(encoded, 113),
    nonce: readU64le(encoded, 121),
  };
}

describe('Payment', () => {
  const sla = { pricePerKib: 0, pricePerRequest: 25 };

  test('cumulative receipts, nonces from 1, none when the usage is unchanged', () => {
    const connection = new FakeConnection();
    const key = receiptKey(SEED);
    const payment = new Payment(connection, { scope: SCOPE, sla, deposit: 100, key });
    connection.usage = { bytes: 300, requests: 1 };
    payment.pay();
    payment.pay(); // nothing new
    connection.usage = { bytes: 700, requests: 3 };
    payment.pay();
    assert.equal(connection.sent.length, 2);
    assert.deepEqual(decoded(connection.sent[0]), { bytes: 300n, requests: 1n, amount: 25n, nonce: 1n });
    assert.deepEqual(decoded(connection.sent[1]), { bytes: 700n, requests: 3n, amount: 75n, nonce: 2n });
    // each verifies under the key over the message it encodes
    const last = connection.sent[1];
    const message = receiptMessage(SCOPE, { totalBytes: 700, totalRequests: 3, totalAmount: 75, nonce: 2 });
    assert.ok(ed25519.verify(last.subarray(129), message, key.publicKey));
  });

  test("the server's empty RECEIPT frame asks for a receipt now", () => {
    const connection = new FakeConnection();
    new Payment(connection, { scope: SCOPE, sla, deposit: 100, key: receiptKey(SEED) });
    connection.usage = { bytes: 10, requests: 2 };
    connection.onreceipt(new Uint8Array(0));
    assert.equal(connection.sent.length, 1);
    assert.equal(decoded(connection.sent[0]).amount, 50n);
  });

  test('usage past the deposit is refused, with no receipt signed', () => {
    const connection = new FakeConnection();
    const payment = new Payment(connection, { scope: SCOPE, sla, deposit: 60, key: receiptKey(SEED) });
    connection.usage = { bytes: 0, requests: 3 };
    assert.throws(() => payment.pay(), PaymentRequired);
    assert.equal(connection.sent.length, 0);
  });

  test('a request the deposit cannot pay is refused before a stream opens', async () => {
    const connection = new FakeConnection();
    let opened = 0;
    connection.openStream = async () => {
      opened += 1;
      throw new Error('not reached');
    };
    const payment = new Payment(connection, { scope: SCOPE, sla, deposit: 40, key: receiptKey(SEED) });
    connection.usage = { bytes: 0, requests: 1 };
    await assert.rejects(payment.request(new Uint8Array(5)), PaymentRequired);
    assert.equal(opened, 0);
  });
});

describe('Payment: receipts that cover several calls (every)', () => {
  const sla = { pricePerKib: 0, pricePerRequest: 25, minDeposit: 1000 };

  /** A connection whose calls each open a stream (a request) and read a short answer. */
  function callingConnection() {
    const connection = new FakeConnection();
    connection.openStream = async () => {
      connection.usage = { ...connection.usage, requests: connection.usage.requests + 1 };
      return {
        end: async (body) => {
          connection.usage = { ...connection.usage, bytes: connection.usage.bytes + body.length };
        },
        readAll: async () => {
          connection.usage = { ...connection.usage, bytes: connection.usage.bytes + 2 };
          return new Uint8Array(2);
        },
      };
    };
    return connection;
  }

  test('by default a receipt once a quarter of the credit (minDeposit) is unsigned', async () => {
    const connection = callingConnection();
    const payment = new Payment(connection, { scope: SCOPE, sla, deposit: 100000, key: receiptKey(SEED) });
    assert.equal(payment.everyAmount, 250n);
    for (let i = 0; i < 25; i++) await payment.request(new Uint8Array(5));
    // every 10th call (250 MIST), each receipt cumulative, none for more than was used
    assert.deepEqual(connection.sent.map((r) => decoded(r).requests), [10n, 20n]);
    assert.deepEqual(connection.sent.map((r) => decoded(r).amount), [250n, 500n]);
    assert.equal(payment.unsigned(), 125n);
    // the close signs the rest: the whole usage, to the MIST
    await payment.close();
    const last = decoded(connection.sent.at(-1));
    assert.deepEqual([last.requests, last.amount, last.nonce], [25n, 625n, 3n]);
  });

  test('every.amount: 0 signs with every call; a bound in MIST signs once it is reached', async () => {
    const each = callingConnection();
    const perCall = new Payment(each, { scope: SCOPE, sla, deposit: 100000, key: receiptKey(SEED), every: { amount: 0 } });
    for (let i = 0; i < 3; i++) await perCall.request(new Uint8Array(1));
    assert.deepEqual(each.sent.map((r) => decoded(r).requests), [1n, 2n, 3n]);
    const batched = callingConnection();
    const payment = new Payment(batched, { scope: SCOPE, sla, deposit: 100000, key: receiptKey(SEED), every: { amount: 60 } });
    for (let i = 0; i < 7; i++) await payment.request(new Uint8Array(1));
    // 75 MIST unsigned at the third call (>= 60): a receipt every three calls
    assert.deepEqual(batched.sent.map((r) => decoded(r).requests), [3n, 6n]);
  });

  test('no minDeposit in the SLA: a receipt with every call, as before', async () => {
    const connection = callingConnection();
    const payment = new Payment(connection, {
      scope: SCOPE, sla: { pricePerKib: 0, pricePerRequest: 25 }, deposit: 1000, key: receiptKey(SEED),
    });
    await payment.request(new Uint8Array(1));
    await payment.request(new Uint8Array(1));
    assert.deepEqual(connection.sent.map((r) => decoded(r).requests), [1n, 2n]);
  });

  test('every.ms: what is left unsigned is signed that long after the first call it covers', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const connection = callingConnection();
    const payment = new Payment(connection, { scope: SCOPE, sla, deposit: 100000, key: receiptKey(SEED), every: { ms: 300 } });
    await payment.request(new Uint8Array(1));
    t.mock.timers.tick(200);
    await payment.request(new Uint8Array(1)); // (the timer runs from the first unsigned call)
    assert.equal(connection.sent.length, 0);
    t.mock.timers.tick(100);
    assert.deepEqual(connection.sent.map((r) => decoded(r).requests), [2n]);
    t.mock.timers.tick(10000); // nothing unsigned: nothing more
    assert.equal(connection.sent.length, 1);
    await payment.request(new Uint8Array(1));
    t.mock.timers.tick(299);
    assert.equal(connection.sent.length, 1);
    t.mock.timers.tick(1);
    assert.deepEqual(connection.sent.map((r) => decoded(r).requests), [2n, 3n]);
  });

  test("the server's ask signs what is unsigned at once, and stops the timer", async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const connection = callingConnection();
    const payment = new Payment(connection, { scope: SCOPE, sla, deposit: 100000, key: receiptKey(SEED) });
    await payment.request(new Uint8Array(1));
    await payment.request(new Uint8Array(1));
    connection.onreceipt(new Uint8Array(0));
    assert.deepEqual(connection.sent.map((r) => decoded(r).amount), [50n]);
    t.mock.timers.tick(5000);
    assert.equal(connection.sent.length, 1);
  });

  test('a closed connection signs nothing when the time bound passes', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const connection = callingConnection();
    const payment = new Payment(connection, { scope: SCOPE, sla, deposit: 100000, key: receiptKey(SEED) });
    await payment.request(new Uint8Array(1));
    connection.state = 'closed';
    t.mock.timers.tick(5000);
    assert.equal(connection.sent.length, 0);
  });

  test('bad bounds are refused', () => {
    const connection = new FakeConnection();
    const options = { scope: SCOPE, sla, deposit: 100, key: receiptKey(SEED) };
    assert.throws(() => new Payment(connection, { ...options, every: { amount: -1 } }), RangeError);
    assert.throws(() => new Payment(connection, { ...options, every: { ms: -5 } }), RangeError);
    assert.throws(() => new Payment(connection, { ...options, every: { ms: Number.NaN } }), RangeError);
  });
});
