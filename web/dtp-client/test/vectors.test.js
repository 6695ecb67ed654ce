// docs/protocol.md's vectors, rebuilt by this package: varints (section 1), record headers
// (2), frames (3), sealed records (4), transport parameters (8.2), the IK binding and the
// identity proof (8.4).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fromHex, hex, readU64le, utf8 as utf8Bytes } from '../src/bytes.js';
import { decodeFrames, encodeFrames } from '../src/frames.js';
import { ed25519Signer, personalMessageDigest, proofMessage, suiAddress, verifyProof } from '../src/identity.js';
import { ikBinding } from '../src/noise.js';
import { decodeParams, encodeParams } from '../src/params.js';
import { NOBLE_AEAD, RECORD_AEAD, SODIUM_AEAD, encodeHeader, openRecord, parseHeader, sealRecord } from '../src/record.js';
import { decodeVarint, encodeVarint } from '../src/varint.js';
import { loadVectors } from './support.js';

const HEADER_AT_BODY = 12; // (the first byte after the header)

function framesOf(vector) {
  return vector.frames.map((f) => ({ ...f, data: fromHex(f.data), ranges: f.ranges }));
}

function big(v) {
  return typeof v === 'bigint' ? v : BigInt(v);
}

function sameFrames(actual, expected) {
  assert.equal(actual.length, expected.length);
  actual.forEach((f, i) => {
    const want = expected[i];
    assert.equal(f.type, want.type);
    for (const slot of ['a', 'b', 'c']) assert.equal(big(f[slot]), big(want[slot]), `frame ${i} slot ${slot}`);
    assert.equal(hex(f.data), hex(want.data));
    assert.deepEqual(f.ranges.map(([lo, hi]) => [big(lo), big(hi)]), want.ranges.map(([lo, hi]) => [big(lo), big(hi)]));
  });
}

describe('protocol.md vectors', () => {
  test('there are vectors of every kind used here', () => {
    for (const kind of ['varint', 'record-header', 'frame', 'aead-record', 'transport-params', 'ik-binding', 'identity-proof']) {
      assert.ok(loadVectors(kind).length > 0, kind);
    }
  });

  for (const v of loadVectors('varint')) {
    test(v.name, () => {
      // JSON.parse rounds values past 2^53; take the exact one from the hex
      const [value] = decodeVarint(fromHex(v.hex), 0);
      assert.equal(hex(encodeVarint(value)), v.hex);
      if (Number.isSafeInteger(v.value)) assert.equal(value, v.value);
    });
  }

  test('varints: longer forms decode, values above 2^62 - 1 do not encode', () => {
    assert.deepEqual(decodeVarint(fromHex('c000000000000005'), 0), [5, 8]);
    assert.equal(decodeVarint(fromHex('80'), 0), null);
    assert.throws(() => encodeVarint(1n << 62n), /VARINT/);
  });

  for (const v of loadVectors('record-header')) {
    test(v.name, () => {
      assert.equal(hex(encodeHeader(v.record_kind, v.body_len, v.counter)), v.hex);
      const h = parseHeader(fromHex(v.hex));
      assert.equal(h.kind, v.record_kind);
      assert.equal(h.bodyLength, v.body_len);
      assert.equal(h.counter, BigInt(v.counter));
    });
  }

  test('record headers are checked kind, flags, size', () => {
    assert.throws(() => parseHeader(fromHex('050000000000000000000000')), /RECORD_KIND/);
    assert.throws(() => parseHeader(fromHex('100100100000000000000000')), /RECORD_FLAGS/);
    assert.throws(() => parseHeader(fromHex('10000f000000000000000000')), /RECORD_SIZE/);
    assert.throws(() => parseHeader(fromHex('010001100000000000000000')), /RECORD_SIZE/);
  });

  for (const v of loadVectors('frame')) {
    test(v.name, () => {
      const decoded = decodeFrames(fromHex(v.hex));
      assert.equal(hex(encodeFrames(decoded)), v.hex);
      // values past 2^53 lose precision in JSON.parse: frame-sequence is checked exactly below
      if (v.name !== 'frame-sequence') {
        sameFrames(decoded, framesOf(v));
        assert.equal(hex(encodeFrames(framesOf(v))), v.hex);
      }
    });
  }

  test('frame-sequence with values past 2^53, exactly', () => {
    const frames = decodeFrames(fromHex('0800fffffffffffffffd02616203ffffffffffffffff010000'));
    assert.equal(frames[0].b, 4611686018427387901n);
    assert.equal(frames[1].a, 4611686018427387903n);
    assert.equal(frames[3].a, 2);
  });

  test('frame errors carry section 3.2 codes', () => {
    assert.throws(() => decodeFrames(fromHex('0e')), /FRAME_TYPE/);
    assert.throws(() => decodeFrames(fromHex('080000056865')), /FRAME_TRUNCATED/);
    assert.throws(() => decodeFrames(fromHex('0a00448100')), /FRAME_SIZE/);
    assert.throws(() => decodeFrames(fromHex('0205000000')), /FRAME_VALUE/);
    assert.throws(() => encodeFrames([{ type: 1, a: 1, b: 0, c: 0, data: new Uint8Array(0), ranges: [] }]), /FRAME_VALUE/);
  });

  test('records are sealed with libsodium here (a dependency), @noble/ciphers where it does not load', () => {
    assert.ok(SODIUM_AEAD !== null, 'libsodium-wrappers did not load');
    assert.equal(RECORD_AEAD, SODIUM_AEAD);
  });

  // each AEAD the records may use makes and opens the vectors' bytes
  for (const aead of [NOBLE_AEAD, SODIUM_AEAD].filter(Boolean)) {
    for (const v of loadVectors('aead-record')) {
      test(`${v.name} (${aead.name})`, () => {
        const key = fromHex(v.key);
        // JSON.parse rounds the counter past 2^53: the exact one is in the sealed header
        const counter = readU64le(fromHex(v.sealed), 4);
        if (Number.isSafeInteger(v.counter)) assert.equal(counter, BigInt(v.counter));
        assert.equal(hex(sealRecord(key, counter, fromHex(v.plaintext), aead)), v.sealed);
        const sealed = fromHex(v.sealed);
        assert.equal(hex(openRecord(key, sealed, parseHeader(sealed), aead)), v.plaintext);
        // a changed counter (the nonce, and associated data), ciphertext or tag: refused
        for (const at of [4, HEADER_AT_BODY, sealed.length - 1]) {
          const forged = fromHex(v.sealed);
          forged[at] ^= 1;
          assert.throws(() => openRecord(key, forged, parseHeader(forged), aead), /authentication/);
        }
      });
    }
  }

  test('the two AEADs make the same records and open each other\'s, an empty plaintext too', () => {
    if (SODIUM_AEAD === null) return;
    const key = Uint8Array.from({ length: 32 }, (_, i) => i * 7);
    for (const size of [0, 1, 150, 16384]) {
      const plaintext = Uint8Array.from({ length: size }, (_, i) => i & 0xff);
      const a = sealRecord(key, 41, plaintext, NOBLE_AEAD);
      const b = sealRecord(key, 41, plaintext, SODIUM_AEAD);
      assert.equal(hex(a), hex(b), `${size} bytes`);
      assert.equal(hex(openRecord(key, a, parseHeader(a), SODIUM_AEAD)), hex(plaintext));
      assert.equal(hex(openRecord(key, b, parseHeader(b), NOBLE_AEAD)), hex(plaintext));
    }
  });

  test('libsodium seals the largest text its own memory area takes as @noble/ciphers does', () => {
    if (SODIUM_AEAD === null) return;
    // (up to a whole record body and its tag: the output area holds the tag past it)
    const key = Uint8Array.from({ length: 32 }, (_, i) => i * 3);
    const nonce = new Uint8Array(12);
    const ad = Uint8Array.from({ length: 12 }, (_, i) => i);
    for (const size of [16384, 16385, 16400]) {
      const plaintext = Uint8Array.from({ length: size }, (_, i) => (i * 11) & 0xff);
      const a = new Uint8Array(size + 16);
      const b = new Uint8Array(size + 16);
      NOBLE_AEAD.sealInto(key, nonce, ad, plaintext, a);
      SODIUM_AEAD.sealInto(key, nonce, ad, plaintext, b);
      assert.equal(hex(b), hex(a), `${size} bytes`);
      assert.equal(hex(SODIUM_AEAD.open(key, nonce, ad, b)), hex(plaintext));
    }
  });

  test('a counter given as a Number seals the same record as the same counter as a BigInt', () => {
    const key = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);
    const plaintext = Uint8Array.from({ length: 40 }, (_, i) => i);
    for (const counter of [0, 1, 255, 256, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 5, Number.MAX_SAFE_INTEGER]) {
      const a = sealRecord(key, counter, plaintext);
      assert.equal(hex(a), hex(sealRecord(key, BigInt(counter), plaintext)), `counter ${counter}`);
      assert.equal(parseHeader(a).counter, BigInt(counter));
    }
    assert.throws(() => sealRecord(key, -1, plaintext), /COUNTER|counter/);
    assert.throws(() => sealRecord(key, (1n << 64n) - 1n, plaintext), /COUNTER|counter/);
  });

  test('an AEAD call leaves no key behind for the next, and a record under another key is refused', () => {
    const a = Uint8Array.from({ length: 32 }, (_, i) => i);
    const b = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
    const plaintext = utf8Bytes('one record');
    const sealedA = sealRecord(a, 3, plaintext);
    const sealedB = sealRecord(b, 3, plaintext);
    assert.notEqual(hex(sealedA), hex(sealedB));
    assert.equal(hex(openRecord(a, sealedA)), hex(plaintext));
    assert.throws(() => openRecord(b, sealedA));
    assert.equal(hex(openRecord(b, sealedB)), hex(plaintext));
  });

  for (const v of loadVectors('transport-params')) {
    test(v.name, () => {
      const params = { ...v.params };
      if (params.cid) params.cid = fromHex(params.cid);
      assert.equal(hex(encodeParams(params)), v.hex);
      const back = decodeParams(fromHex(v.hex));
      assert.deepEqual({ ...back, ...(back.cid ? { cid: hex(back.cid) } : {}) }, v.params);
    });
  }

  test('parameters: strict for listed keys, tolerant for others', () => {
    const base = '85a17601a26d64ce00800000a36d7364ce00400000a26d73cc80a26974cdea60';
    // an unknown key with a nested map whose keys are integers is ignored
    const extra = `86${base.slice(2)}a178810102`;
    assert.equal(decodeParams(fromHex(extra)).it, 60000);
    assert.throws(() => decodeParams(fromHex(`86${base.slice(2)}a17601`)), /twice/);
    assert.throws(() => decodeParams(fromHex(`86${base.slice(2)}01c0`)), /not a str/);
    assert.throws(() => decodeParams(fromHex(`86${base.slice(2)}a178c1`)), /0xc1/);
    assert.throws(() => decodeParams(fromHex(`${base}00`)), /after the map/);
    assert.throws(() => decodeParams(fromHex('84a17601a26d6400a36d736400a26d7300')), /"it" is missing/);
    assert.throws(() => decodeParams(fromHex('85a176c3a26d6400a36d736400a26d7300a2697400')), /not an integer/);
    assert.throws(() => decodeParams(fromHex('85a176cf4000000000000000a26d6400a36d736400a26d7300a2697400')), /out of range/);
  });

  for (const v of loadVectors('ik-binding')) {
    test(v.name, () => {
      assert.equal(hex(ikBinding(fromHex(v.server_static), fromHex(v.client_ephemeral), fromHex(v.prologue))), v.binding);
    });
  }

  for (const v of loadVectors('identity-proof')) {
    test(v.name, async () => {
      const pattern = v.context === 'DTP-AUTH-IK-V1' ? 'IK' : 'XX';
      const message = proofMessage(pattern, fromHex(v.bound));
      assert.equal(hex(message), v.message);
      assert.equal(hex(personalMessageDigest(message)), v.digest);
      const signer = ed25519Signer(fromHex(v.ed25519_seed));
      assert.equal(signer.address, v.address);
      const proof = await signer.signPersonalMessage(message);
      assert.equal(hex(proof), v.proof);
      assert.equal(verifyProof(proof, message), v.address);
      assert.equal(suiAddress(proof.subarray(65)), v.address);
    });
  }
});
