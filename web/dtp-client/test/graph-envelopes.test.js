// docs/graph.md's vectors of the signed tiers, rebuilt by src/graph: reader keys derived
// from a Sui keystring, protected fields (the stored envelope and its Gun string), private
// values, wrapped keys and reader records (fixed nonces and ephemeral keys), and the
// refusals with Python's reasons; then what the vectors cannot show: altered bytes
// refused, round trips, the tie order of the Gun strings.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fromHex, hex, utf8 } from '../src/bytes.js';
import { compareUtf16, fromBase64url, gunText, isGunText, readText } from '../src/graph/format.js';
import { graphIdentity, identityFromKeystring, readerKeyOf } from '../src/graph/keys.js';
import * as priv from '../src/graph/private.js';
import * as signed from '../src/graph/signed.js';
import { ROOT } from './support.js';

/** Every ```dtp-vector block of docs/graph.md of one kind. */
function graphVectors(kind) {
  const text = readFileSync(join(ROOT, 'docs', 'graph.md'), 'utf8');
  return [...text.matchAll(/```dtp-vector\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1])).filter((v) => v.kind === kind);
}

const KINDS = ['graph-reader-key', 'graph-signed-field', 'graph-private-field', 'graph-refused'];

describe('docs/graph.md vectors', () => {
  test('there are vectors of every kind', () => {
    for (const kind of KINDS) assert.ok(graphVectors(kind).length > 0, kind);
  });

  for (const v of graphVectors('graph-reader-key')) {
    test(v.name, () => {
      const me = graphIdentity(fromHex(v.seed));
      assert.equal(me.address, v.address);
      assert.equal(hex(me.readerSecret), v.reader_secret);
      assert.equal(hex(me.readerKey), v.reader_key);
      assert.equal(me.keystring(), v.keystring);
      assert.equal(hex(identityFromKeystring(v.keystring).readerKey), v.reader_key);
    });
  }

  for (const v of graphVectors('graph-signed-field')) {
    test(v.name, () => {
      const me = graphIdentity(fromHex(v.seed));
      assert.equal(gunText(v.value), v.text);
      const stored = signed.seal(me, v.soul, v.field, v.state, v.text);
      assert.equal(hex(stored), v.stored);
      assert.equal(signed.toWire(stored), v.wire);
      assert.equal(signed.check(v.soul, v.field, v.state, v.wire), null);
      assert.equal(signed.check(v.soul, v.field, v.state, stored), null);
      assert.deepEqual(signed.open(v.wire), v.value);
    });
  }

  for (const v of graphVectors('graph-private-field')) {
    test(v.name, () => {
      const author = graphIdentity(fromHex(v.seed));
      let body;
      if (v.body_kind === 'value') {
        assert.equal(gunText(v.value), v.text);
        body = priv.sealValue(fromHex(v.content_key), fromHex(v.key_id), v.soul, v.field, v.state, v.text, fromHex(v.nonce));
        assert.equal(priv.openValue(fromHex(v.content_key), v.soul, v.field, v.state, fromHex(v.body)), v.text);
      } else if (v.body_kind === 'wrap') {
        const reader = graphIdentity(fromHex(v.reader_seed));
        assert.equal(v.field, priv.wrapField(fromHex(v.key_id), reader.readerKey));
        body = priv.wrap(fromHex(v.content_key), reader.readerKey, v.soul, v.field, v.state, fromHex(v.ephemeral_secret));
        const key = priv.unwrap(reader.readerSecret, v.soul, v.field, v.state, fromHex(v.body));
        assert.equal(hex(key), v.content_key);
        assert.throws(() => priv.unwrap(author.readerSecret, v.soul, v.field, v.state, fromHex(v.body)), priv.PrivateDataError);
      } else {
        body = Uint8Array.of(priv.READER, v.on ? 1 : 0);
      }
      assert.equal(hex(body), v.body);
      assert.equal(priv.sign(author, v.soul, v.field, v.state, body), v.stored);
      assert.equal(priv.check(v.soul, v.field, v.state, v.stored), null);
      assert.equal(hex(priv.unpack(v.stored).body), v.body);
    });
  }

  for (const v of graphVectors('graph-refused')) {
    test(v.name, () => {
      const reason = signed.check(v.soul, v.field, v.state, v.value) ?? priv.check(v.soul, v.field, v.state, v.value);
      assert.equal(reason, v.reason);
    });
  }
});

describe('the envelopes beyond the vectors', () => {
  const alice = graphIdentity(new Uint8Array(32).fill(7));
  const bob = graphIdentity(new Uint8Array(32).fill(9));
  const soul = signed.userSoul(alice.address, 'profile');
  const space = priv.spaceSoul(alice.address, 'notes');

  test('any altered character of a signed field or a private field is refused', () => {
    // (mostly as badly signed: the same alphabet, so the form still reads)
    const wire = signed.toWire(signed.seal(alice, soul, 'name', 5, '"Ann"'));
    const sealed = priv.sign(alice, space, 'f', 5, priv.sealValue(new Uint8Array(32), new Uint8Array(16), space, 'f', 5, '"x"'));
    for (const [value, judge, s] of [
      [wire, signed.check, soul],
      [sealed, priv.check, space],
    ]) {
      for (let i = 7; i < value.length; i += 3) {
        const swapped = value[i] === '0' ? '1' : '0'; // (a character of the same alphabet)
        const altered = value.slice(0, i) + swapped + value.slice(i + 1);
        assert.notEqual(judge(s, 'name', 5, altered) ?? judge(s, 'f', 5, altered), null, `${i}`);
      }
    }
  });

  test('every Gun value round-trips through both envelopes', () => {
    const key = priv.newContentKey();
    for (const value of [null, true, false, 0, -1.5, 1e21, 1e-7, '', 'é😀\n"', { '#': 'a/b' }, 'x'.repeat(100)]) {
      const text = gunText(value);
      assert.ok(isGunText(text));
      const wire = signed.toWire(signed.seal(alice, soul, 'f', 1700000000000.25, text));
      assert.equal(signed.check(soul, 'f', 1700000000000.25, wire), null);
      assert.deepEqual(signed.open(wire), value);
      const body = priv.sealValue(key.key, key.keyId, space, 'f', 3, text);
      assert.equal((body.length - 57) % 32, 0);
      assert.deepEqual(readText(priv.openValue(key.key, space, 'f', 3, body)), value);
      assert.throws(() => priv.openValue(key.key, space, 'f', 4, body), priv.PrivateDataError);
      assert.throws(() => priv.openValue(key.key, `${space}/x`, 'f', 3, body), priv.PrivateDataError);
    }
    for (const bad of [NaN, Infinity, [1], { a: 1 }, '\ud800', undefined]) assert.throws(() => gunText(bad));
    assert.ok(!isGunText('1.0') && !isGunText('"\\u0041"') && !isGunText('-0'));
  });

  test("the Gun strings of an owner's tie order as the stored envelopes do", () => {
    // gun breaks a tie by JSON.stringify's text; dtp peers by the stored bytes' UTF-16 order
    for (let i = 0; i < 300; i++) {
      const a = signed.seal(alice, soul, 'f', 5, JSON.stringify(`a${i}`));
      const b = signed.seal(alice, soul, 'f', 5, JSON.stringify(`b${i}`));
      const stored = Math.sign(compareUtf16(a, b));
      const ja = JSON.stringify(signed.toWire(a));
      const jb = JSON.stringify(signed.toWire(b));
      assert.equal(ja < jb ? -1 : ja > jb ? 1 : 0, stored);
    }
  });

  test('a reader must be a usable X25519 key; base64url has one spelling', () => {
    assert.throws(() => readerKeyOf(new Uint8Array(32)), /not a usable/);
    assert.throws(() => readerKeyOf('00'), TypeError);
    assert.equal(hex(readerKeyOf(hex(bob.readerKey))), hex(bob.readerKey));
    assert.equal(hex(readerKeyOf(bob)), hex(bob.readerKey));
    assert.equal(fromBase64url('AB'), null); // (unused low bits set)
    assert.deepEqual([...fromBase64url('AA')], [0]);
    assert.equal(fromBase64url('A'), null);
    assert.equal(fromBase64url('AA=='), null);
  });

  test('only the owner seals', () => {
    assert.throws(() => signed.seal(bob, soul, 'f', 1, '1'), /only its owner/);
    assert.throws(() => priv.sign(bob, space, 'f', 1, utf8('x')), /belongs to/);
  });
});
