// A page's keys for the graph's signed tiers (docs/graph.md, "The tiers from a browser"):
// one Sui Ed25519 key, which names the page's user (its Sui address) and signs what it
// writes in its protected and private spaces, and the X25519 key it reads private spaces
// with -- derived from the Ed25519 seed as a Python host derives its Noise static key
// from a Sui keystring (HostIdentity.from_sui_keystring), so the same keystring is the
// same identity on both sides, and a reader is known by the key Python peers know it by.

import { ed25519, x25519 } from '@noble/curves/ed25519.js';
import { blake2b } from '@noble/hashes/blake2.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { base64Decode, fromHex, hex, utf8 } from '../bytes.js';
import { suiAddress } from '../identity.js';

const ED25519_FLAG = 0x00;
const NOISE_DERIVATION_KEY = utf8('DTP/noise-static/v1');

/** The identity of a 32-byte Ed25519 seed: `address` (Sui), `publicKey`, `readerKey`
 * (X25519 public: what an author adds as a reader), `sign(message)`, and what it needs to
 * open wrapped keys (`readerSecret`). */
export function graphIdentity(seed) {
  if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new TypeError('an Ed25519 seed is 32 bytes');
  const secret = Uint8Array.from(seed);
  const publicKey = ed25519.getPublicKey(secret);
  const readerSecret = blake2b(secret, { key: NOISE_DERIVATION_KEY, dkLen: 32 });
  return Object.freeze({
    address: suiAddress(publicKey),
    publicKey,
    readerKey: x25519.getPublicKey(readerSecret),
    readerSecret,
    sign: (message) => ed25519.sign(message, secret),
    keystring: () => keystringOf(secret),
  });
}

/** A fresh identity (random seed). */
export function generateIdentity() {
  return graphIdentity(randomBytes(32));
}

/** The identity of a Sui keystring, `base64(0x00 || seed)` (sui.keystore, pysui). */
export function identityFromKeystring(keystring) {
  const raw = base64Decode(String(keystring).trim());
  if (raw.length !== 33 || raw[0] !== ED25519_FLAG) {
    throw new TypeError('a Sui Ed25519 keystring is base64 of 33 bytes: flag 0x00 and the seed');
  }
  return graphIdentity(raw.subarray(1));
}

function keystringOf(seed) {
  let text = '';
  for (const b of [ED25519_FLAG, ...seed]) text += String.fromCharCode(b);
  return btoa(text);
}

/** The identity kept under `name` in `storage` (a page's localStorage: it stays with the
 * browser profile), made and stored on first use. The keystring is the secret: a page
 * that cannot trust its storage asks its user for one (identityFromKeystring). */
export function storedIdentity(storage, name = 'dtp-graph-identity') {
  const kept = storage.getItem(name);
  if (kept) return identityFromKeystring(kept);
  const identity = generateIdentity();
  storage.setItem(name, identity.keystring());
  return identity;
}

/** Whether an Ed25519 signature verifies, strictly (RFC 8032, as Python's cryptography
 * verifies: no ZIP-215 leniency, so a page takes no signature a Python peer refuses). */
export function verifies(signature, message, publicKey) {
  try {
    return ed25519.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}

/** A reader key given as hex or bytes, checked: 32 bytes, and not of low order (a key
 * every secret agrees with would wrap content keys to everyone). */
export function readerKeyOf(reader) {
  const key = typeof reader === 'string' ? fromHex(reader) : reader?.readerKey ?? reader;
  if (!(key instanceof Uint8Array) || key.length !== 32) {
    throw new TypeError('a reader is a 32-byte X25519 public key (hex or bytes) or an identity');
  }
  try {
    x25519.getSharedSecret(randomBytes(32), key);
  } catch {
    throw new TypeError(`not a usable X25519 public key: ${hex(key)}`);
  }
  return Uint8Array.from(key);
}
