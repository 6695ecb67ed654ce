// The protected tier (docs/graph.md, "Signed namespaces" and its "On Gun's
// wire"): souls `~0x<Sui address>[/path]`, every field signed by the address's Ed25519
// key over its soul, field, state and Gun text. Python peers store the envelope
// `public key (32) || signature (64) || Gun text`; on Gun's wire it is the string
// `"dtp/s1:" + ranked hex of (key || signature) + Gun text`.

import { concat, fromHex, utf8 } from '../bytes.js';
import { suiAddress } from '../identity.js';
import { GraphValueError, isGunText, rank, readText, updateBytes } from './format.js';
import { verifies } from './keys.js';

export const SIGN_DOMAIN = utf8('dtp-graph-v1/signed-field\0');
export const WIRE_PREFIX = 'dtp/s1:';
const ENVELOPE_LEN = 96;
const CLAIMED = /^~0x[0-9a-fA-F]{64}/;
const OWNED = /^~(0x[0-9a-f]{64})(?:\/[\s\S]*)?$/;
const WIRE = /^dtp\/s1:([0-9a-f]{192})/;
const UNRANK = new Uint8Array(256);
for (let b = 0; b < 256; b++) UNRANK[rank(b)] = b;

// reasons, as Python's dtp.graph.namespace names them
export const UNSIGNED = 'unsigned';
export const BAD_SIGNATURE = 'bad_signature';
export const WRONG_KEY = 'wrong_key';
export const BAD_SOUL = 'bad_soul';

/** Whether a soul starts like a protected one (well-formed or refused). */
export function isUserSpace(soul) {
  return CLAIMED.test(soul);
}

/** The owner's Sui address of a protected soul, or null. */
export function ownerOf(soul) {
  const match = OWNED.exec(soul);
  return match ? match[1] : null;
}

/** The soul `~<address>[/path]`. */
export function userSoul(address, path = '') {
  const soul = `~${address}${path ? `/${path}` : ''}`;
  if (ownerOf(soul) !== address) throw new GraphValueError(`not a Sui address: ${address}`);
  return soul;
}

/** What the owner signs for a field holding the Gun text `text`. */
export function signingMessage(soul, field, state, text) {
  return concat(SIGN_DOMAIN, updateBytes(soul, field, state, utf8(text)));
}

/** The stored envelope (bytes) of a field: `identity` must own the soul. */
export function seal(identity, soul, field, state, text) {
  if (ownerOf(soul) !== identity.address) {
    throw new GraphValueError(`${soul.slice(0, 80)} is not ${identity.address}'s: only its owner signs there`);
  }
  return concat(identity.publicKey, identity.sign(signingMessage(soul, field, state, text)), utf8(text));
}

/** The Gun string an envelope travels as. */
export function toWire(stored) {
  let ranked = '';
  for (let i = 0; i < ENVELOPE_LEN; i++) ranked += rank(stored[i]).toString(16).padStart(2, '0');
  return WIRE_PREFIX + ranked + new TextDecoder('utf-8', { fatal: true }).decode(stored.subarray(ENVELOPE_LEN));
}

/** {publicKey, signature, text} of a Gun string of that form, or null. */
export function fromWire(value) {
  if (typeof value !== 'string') return null;
  const match = WIRE.exec(value);
  if (!match) return null;
  const raw = fromHex(match[1]).map((r) => UNRANK[r]);
  const text = value.slice(WIRE_PREFIX.length + 2 * ENVELOPE_LEN);
  return { publicKey: raw.subarray(0, 32), signature: raw.subarray(32), text };
}

/** The same, from a stored envelope (bytes). */
export function fromStored(stored) {
  if (!(stored instanceof Uint8Array) || stored.length < ENVELOPE_LEN) return null;
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(stored.subarray(ENVELOPE_LEN));
  } catch {
    return null;
  }
  return { publicKey: stored.subarray(0, 32), signature: stored.subarray(32, ENVELOPE_LEN), text };
}

/** Why a field of a protected soul must be refused (a reason of Python's), or null when
 * it verifies -- and for souls of other tiers. `value`: the Gun string of Gun's wire, or
 * the stored envelope's bytes. */
export function check(soul, field, state, value) {
  if (!isUserSpace(soul)) return null;
  const owner = ownerOf(soul);
  if (owner === null) return BAD_SOUL;
  const parts = value instanceof Uint8Array ? fromStored(value) : fromWire(value);
  if (parts === null || !isGunText(parts.text)) return UNSIGNED;
  if (suiAddress(parts.publicKey) !== owner) return WRONG_KEY;
  return verifies(parts.signature, signingMessage(soul, field, state, parts.text), parts.publicKey) ? null : BAD_SIGNATURE;
}

/** The value a verified field holds (check() first). */
export function open(value) {
  const parts = value instanceof Uint8Array ? fromStored(value) : fromWire(value);
  if (parts === null) throw new GraphValueError('not a signed field');
  return readText(parts.text);
}
