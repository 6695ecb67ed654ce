// Object IDs as a page holds them (src/ids.js): connect()'s `cid` in every form the guide
// shows -- "0x" and hex (short forms padded), hex alone, 32 bytes -- encoded as the 32
// bytes the server reads, anything else refused with a TypeError that says what it got,
// before a WebSocket is opened; connectionCid importable from the package's main module,
// whose imports never reach the Sui SDK.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import { hex } from '../src/bytes.js';
import { Connection } from '../src/connection.js';
import { ed25519Signer } from '../src/identity.js';
import { connectionCid, objectIdBytes } from '../src/index.js';
import { decodeParams } from '../src/params.js';
import { connect } from '../src/websocket.js';
import { RecordingCarrier } from './support.js';

const FULL = `${'ab'.repeat(31)}cd`;
const SIGNER = ed25519Signer(new Uint8Array(32).fill(7));

describe('connection IDs', () => {
  test('every form the guide shows gives the same 32 bytes', () => {
    const bytes = Uint8Array.from(FULL.match(/../g).map((b) => parseInt(b, 16)));
    for (const form of [`0x${FULL}`, FULL, `0X${FULL.toUpperCase()}`, bytes, bytes.buffer]) {
      assert.equal(hex(connectionCid(form)), FULL);
    }
    assert.equal(hex(connectionCid('0x5')), `${'00'.repeat(31)}05`);
    assert.equal(hex(objectIdBytes('c0ffee')), `${'0'.repeat(58)}c0ffee`);
  });

  test('anything else is a TypeError naming what came', () => {
    const cases = [
      ['0x', /a connection ID is "0x" and 1 to 64 hex digits.*got "0x"/],
      [`0x${'1'.repeat(65)}`, /1 to 64 hex digits/],
      ['0xnothex', /got "0xnothex"/],
      [new Uint8Array(31), /a connection ID is 32 bytes, got 31/],
      [12345, /a hex string .* or 32 bytes, got 12345/],
      [{ id: '0x1' }, /got Object/],
      [[1, 2, 3], /got Array/],
    ];
    for (const [value, message] of cases) assert.throws(() => connectionCid(value), { name: 'TypeError', message });
  });

  test("a Connection sends the ID's 32 bytes, whatever form it was given in", async () => {
    for (const cid of [`0x${FULL}`, FULL]) {
      const carrier = new RecordingCarrier();
      const connection = new Connection(carrier, { signer: SIGNER, cid, port: 8 });
      assert.equal(hex(connection.cid), FULL);
      // (the XX first message carries the parameters in clear: the cid is there as sent)
      connection.open().catch(() => {});
      await new Promise((r) => setTimeout(r, 20));
      const record = carrier.sent[0] instanceof Uint8Array ? carrier.sent[0] : Uint8Array.from(Buffer.from(carrier.sent[0], 'hex'));
      const payload = record.subarray(12 + 1 + 32); // header, pattern byte, e
      assert.equal(hex(decodeParams(payload).cid), FULL);
      connection.close();
    }
  });

  test('connect() refuses a bad ID before it opens a WebSocket', async () => {
    let opened = 0;
    class NoSocket {
      constructor() {
        opened += 1;
      }
    }
    await assert.rejects(
      connect('ws://127.0.0.1:9/dtp', { signer: SIGNER, cid: 'connection-1', WebSocket: NoSocket }),
      { name: 'TypeError', message: /a connection ID .* got "connection-1"/ },
    );
    assert.equal(opened, 0);
  });

  test("the main module's imports never reach the Sui SDK (connectionCid needs none)", () => {
    const src = join(dirname(fileURLToPath(import.meta.url)), '..', 'src');
    const seen = new Set();
    const bare = new Set();
    const walk = (file) => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/gm)) {
        if (m[1].startsWith('.')) walk(resolve(dirname(file), m[1]));
        else bare.add(m[1]);
      }
    };
    walk(join(src, 'index.js'));
    assert.ok(seen.has(join(src, 'ids.js')) && seen.has(join(src, 'local-ledger.js')));
    assert.ok(!seen.has(join(src, 'sui.js')));
    assert.deepEqual([...bare].filter((name) => name.startsWith('@mysten')), []);
  });
});
