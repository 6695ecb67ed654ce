// Short arrays cut from a shared buffer (bytes.js newBytes, utf8Piece) and what is made
// of them: sealed records and a string written to a stream. Each piece is the caller's
// alone -- nothing the package makes later lands on it -- and what the application is
// given (an opened plaintext) is never one.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SLAB_PIECE, fromHex, hex, newBytes, utf8, utf8Piece } from '../src/bytes.js';
import { FrameType, decodeFrames } from '../src/frames.js';
import { DecryptionError } from '../src/errors.js';
import { HEADER_SIZE, RECORD_AEAD, openRecord, parseHeader, sealRecord } from '../src/record.js';
import { acceptedIK, sentFrames } from './accepted.js';

describe('pieces of a shared buffer', () => {
  test('newBytes: zeroed, of the length asked, never overlapping the one before', () => {
    const made = [];
    for (let i = 0; i < 400; i++) {
      const n = 1 + ((i * 37) % 300);
      const piece = newBytes(n);
      assert.equal(piece.length, n);
      assert.ok(piece.every((b) => b === 0), `piece ${i} is zeroed`);
      piece.fill(i & 0xff || 1);
      made.push(piece);
    }
    // (every piece still holds what was written to it: none was handed out twice)
    made.forEach((piece, i) => assert.ok(piece.every((b) => b === (i & 0xff || 1)), `piece ${i} kept`));
  });

  test('newBytes: an empty or a long array has a buffer of its own', () => {
    for (const n of [0, SLAB_PIECE + 1, 16384]) {
      const bytes = newBytes(n);
      assert.equal(bytes.length, n);
      assert.equal(bytes.byteOffset, 0);
      assert.equal(bytes.buffer.byteLength, n);
    }
  });

  test('utf8Piece is the UTF-8 utf8 makes, of every kind of text', () => {
    const texts = [
      '', 'a', '{"jsonrpc":"2.0","method":"echo","params":["x"],"id":1}', 'caf\u00e9', 'ascii then \u00e9',
      '\u20ac'.repeat(10), '\u{1f600} a pair', 'a lone \ud800 surrogate', 'x'.repeat(SLAB_PIECE / 3),
      'x'.repeat(SLAB_PIECE / 3 + 1), '\u00e9'.repeat(5000),
    ];
    const pieces = texts.map((text) => [text, utf8Piece(text)]);
    for (const [text, piece] of pieces) assert.equal(hex(piece), hex(utf8(text)), JSON.stringify(text.slice(0, 40)));
  });
});

describe('records and plaintexts as pieces', () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => i * 5);

  test('records sealed one after another each open to their own plaintext', () => {
    const plaintexts = Array.from({ length: 300 }, (_, i) => Uint8Array.from({ length: (i * 13) % 200 }, (_, j) => (i + j) & 0xff));
    const records = plaintexts.map((p, i) => sealRecord(key, i, p));
    records.forEach((record, i) => assert.equal(hex(openRecord(key, record)), hex(plaintexts[i]), `record ${i}`));
  });

  test('a BigInt counter\'s header is written into its own record, nothing before it', () => {
    const before = sealRecord(key, 7, utf8('before'));
    const copy = before.slice();
    const counter = (1n << 60n) + 3n;
    const record = sealRecord(key, counter, utf8('after'));
    assert.equal(hex(before), hex(copy));
    assert.equal(parseHeader(record).counter, counter);
    assert.equal(hex(openRecord(key, record)), hex(utf8('after')));
  });

  test('a plaintext opened stays as it was when more records are opened', () => {
    const first = openRecord(key, sealRecord(key, 0, utf8('the first answer')));
    for (let i = 1; i < 200; i++) openRecord(key, sealRecord(key, i, utf8(`answer ${i}`.repeat(3))));
    assert.equal(new TextDecoder().decode(first), 'the first answer');
  });

  test('a plaintext opened has a buffer of its own: nothing else is read through it, and transferring it breaks no later seal', () => {
    const opened = openRecord(key, sealRecord(key, 0, utf8('mine')));
    assert.equal(opened.byteOffset, 0);
    assert.equal(opened.buffer.byteLength, opened.length);
    structuredClone(opened.buffer, { transfer: [opened.buffer] });
    assert.equal(opened.length, 0); // (detached: the transfer took it)
    assert.equal(hex(openRecord(key, sealRecord(key, 1, utf8('after')))), hex(utf8('after')));
  });

  test(`a flipped bit anywhere in a record is refused, and the next record opens (${RECORD_AEAD.name})`, () => {
    const plaintext = utf8('{"jsonrpc":"2.0","id":1,"result":["x"]}');
    const record = sealRecord(key, 5, plaintext);
    const header = parseHeader(record);
    for (let at = 0; at < record.length; at++) {
      if (at < 4) continue; // (kind, flags and length: parseHeader's to refuse)
      for (const bit of [0x01, 0x80]) {
        const bad = record.slice();
        bad[at] ^= bit;
        assert.throws(() => openRecord(key, bad, at < HEADER_SIZE ? parseHeader(bad) : header), DecryptionError,
          `byte ${at} bit ${bit}`);
        // (the AEAD's memory area holds nothing of the refused record that matters)
        assert.equal(hex(openRecord(key, record, header)), hex(plaintext));
      }
    }
  });
});

describe('a string written to a stream', () => {
  test('goes out as its UTF-8, in one STREAM_FIN frame', async () => {
    const { t, connection, carrier } = await acceptedIK();
    await connection.openStream();
    const stream = await connection.openStream();
    const before = carrier.sent.length;
    const text = '{"method":"caf\u00e9 \u{1f600}"}';
    await stream.end(text);
    assert.deepEqual(sentFrames(t, carrier, before), [[[FrameType.STREAM_FIN, 2, 0]]]);
    const [f] = decodeFrames(openRecord(fromHex(t.client_to_server), fromHex(carrier.sent[before])));
    assert.equal(hex(f.data), hex(utf8(text)));
    assert.equal(connection.sentTotal, utf8(text).length);
  });
});
