// docs/protocol.md section 8.4's proofs of every Sui scheme, checked by this package
// (src/schemes.js, src/identity.js): each vector proves its address (a zkLogin one waits
// on a Sui node, which this package does not ask), each refused one is refused for the
// rule it breaks, version 1 takes the Ed25519 proof alone, and `auth` carries 1 to 3840
// bytes.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fromHex, hex } from '../src/bytes.js';
import { HandshakeError } from '../src/errors.js';
import { checkProof, checkProofOf, isEd25519Proof, personalMessageDigest } from '../src/identity.js';
import { decodeParams, encodeParams } from '../src/params.js';
import { InvalidSignature, checkSignature, issOfClaim } from '../src/schemes.js';
import { loadVectors } from './support.js';

const WHY = {
  'identity-proof-refused-high-s': /high s/,
  'identity-proof-refused-flag': /does not verify/,
  'identity-proof-refused-another-key': /does not verify/,
  'identity-proof-refused-multisig-threshold': /under its threshold/,
  'identity-proof-refused-multisig-extra-bit': /2 signatures whose bitmap names 3/,
  'identity-proof-refused-multisig-trailing': /1 bytes after it/,
};

describe('proofs of every Sui scheme', () => {
  for (const v of loadVectors('identity-proof-scheme')) {
    test(v.name, () => {
      const proof = fromHex(v.proof);
      const message = fromHex(v.message);
      assert.equal(hex(personalMessageDigest(message)), v.digest);
      const signer = checkSignature(proof, personalMessageDigest(message));
      assert.equal(signer.address, v.address);
      assert.equal(signer.scheme, v.scheme);
      assert.equal(hex(signer.publicKey), v.public_key);
      assert.equal(signer.nodeCheck !== null, v.node);
      assert.equal(checkProofOf(proof, message).address, v.address);
      assert.throws(() => checkProofOf(proof, message, 1), /transport version 1 takes only/);
      assert.ok(!isEd25519Proof(proof));
      if (v.node) assert.throws(() => checkProof(proof, message), /verified by a Sui node/);
      else assert.equal(checkProof(proof, message), v.address);
    });
  }

  for (const v of loadVectors('identity-proof-refused')) {
    test(v.name, () => {
      const proof = fromHex(v.proof);
      const message = fromHex(v.message);
      assert.throws(() => checkSignature(proof, personalMessageDigest(message)), (err) => err instanceof InvalidSignature && WHY[v.name].test(err.message));
      assert.throws(() => checkProof(proof, message), (err) => err instanceof HandshakeError && WHY[v.name].test(err.message));
    });
  }

  test('the Ed25519 vectors still pass under version 1', () => {
    for (const v of loadVectors('identity-proof')) {
      const proof = fromHex(v.proof);
      assert.ok(isEd25519Proof(proof));
      assert.equal(checkProof(proof, fromHex(v.message), 1), v.address);
    }
  });

  test('the zkLogin issuer is read as Sui reads it', () => {
    const [zk] = loadVectors('identity-proof-scheme').filter((v) => v.scheme === 'zklogin');
    const { value, indexMod4 } = zk.inputs.issBase64Details;
    assert.equal(issOfClaim(value, indexMod4), 'https://id.twitch.tv/oauth2');
    assert.throws(() => issOfClaim(value, 3), /impossible offset/);
    const twice = Buffer.from('"iss":"a","iss":"b",').toString('base64url');
    assert.throws(() => issOfClaim(twice, 0), /twice/);
  });

  test('auth carries 1 to 3840 bytes, in bin 8 or bin 16', () => {
    const base = { v: 2, md: 1, msd: 1, ms: 1, it: 1 };
    for (const size of [1, 97, 255, 256, 3840]) {
      const decoded = decodeParams(encodeParams({ ...base, auth: new Uint8Array(size).fill(1) }));
      assert.equal(decoded.auth.length, size);
    }
    // a bin 16 of 3841 bytes and an empty bin 8, written by hand
    const head = encodeParams(base);
    const withAuth = (bin) => Uint8Array.from([0x86, ...head.subarray(1), 0xa4, ...Buffer.from('auth'), ...bin]);
    assert.throws(() => decodeParams(withAuth([0xc5, 0x0f, 0x01, ...new Uint8Array(3841)])), /1 to 3840 bytes/);
    assert.throws(() => decodeParams(withAuth([0xc4, 0x00])), /1 to 3840 bytes/);
  });
});
