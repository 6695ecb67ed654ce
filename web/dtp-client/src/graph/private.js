// The private tier's envelope, format 1 (docs/graph.md, "The private envelope"): souls
// `%0x<address>/<space>[/path]` and the key node `%0x<address>/<space>:keys`, every field
// a Gun string `"dtp/p1:" + base64url(ed25519 key || signature || body)` signed by the
// space's author; values encrypted under content keys, which are wrapped to each reader's
// X25519 key. Peers that are no readers check the signature and the body's shape only.

import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { expand, hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { concat, fromHex, hex, utf8 } from '../bytes.js';
import { suiAddress } from '../identity.js';
import { GraphValueError, base64url, fromBase64url, updateBytes } from './format.js';
import { verifies } from './keys.js';

export const TEXT_PREFIX = 'dtp/p1:';
export const KEYS_SUFFIX = ':keys';
const SIGN_DOMAIN = utf8('dtp-graph-v1/private-field\0');
const VALUE_LABEL = utf8('dtp-graph-v1/private-value\0');
const WRAP_LABEL = utf8('dtp-graph-v1/private-wrap\0');

export const VALUE = 1;
export const READER = 2;
export const WRAP = 3;
export const KEY_ID_LEN = 16;
const NONCE_LEN = 24;
const TAG_LEN = 16;
const PAD = 32;
const SIGNED_LEN = 96;
const VALUE_HEADER = 1 + KEY_ID_LEN + NONCE_LEN;
const WRAP_LEN = 1 + 32 + 32 + TAG_LEN;
const ZERO_NONCE = new Uint8Array(12);
const HAM_MAX_VALUE = 1 << 20;
/** The largest Gun text (UTF-8 bytes) a private value holds: its string fits a HAM value. */
export const MAX_PLAINTEXT =
  Math.floor(
    (Math.floor((HAM_MAX_VALUE - (TEXT_PREFIX.length + 1) - 1) / 4) * 3 - SIGNED_LEN - VALUE_HEADER - TAG_LEN) / PAD,
  ) * PAD;

const CLAIMED = /^%0x[0-9a-fA-F]{64}/;
const SOUL = /^%(0x[0-9a-f]{64})\/([A-Za-z0-9_.-]{1,64})(:keys|\/[\s\S]+)?$/;
export const SPACE_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const READER_FIELD = /^r:([0-9a-f]{64})$/;
const WRAP_FIELD = /^w:([0-9a-f]{32}):([0-9a-f]{64})$/;

// reasons, as Python's dtp.graph._private names them
export const UNSIGNED = 'private_unsigned';
export const WRONG_KEY = 'private_wrong_key';
export const BAD_SIGNATURE = 'private_bad_signature';
export const BAD_SOUL = 'private_bad_soul';
export const MALFORMED = 'private_malformed';

/** A value or wrapped key that does not open (a damaged or altered field). */
export class PrivateDataError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PrivateDataError';
  }
}

/** Whether a soul starts like a private one (well-formed or refused). */
export function isPrivate(soul) {
  return CLAIMED.test(soul);
}

/** {author, space, keys, path} of a well-formed private soul, or null. */
export function parseSoul(soul) {
  const match = SOUL.exec(soul);
  if (!match) return null;
  const tail = match[3] ?? '';
  return { author: match[1], space: match[2], keys: tail === KEYS_SUFFIX, path: tail.startsWith('/') ? tail.slice(1) : '' };
}

export function spaceSoul(author, space) {
  return `%${author}/${space}`;
}

export function keySoul(author, space) {
  return `%${author}/${space}${KEYS_SUFFIX}`;
}

/** The key node's field recording whether `reader` (bytes) reads. */
export function readerField(reader) {
  return `r:${hex(reader)}`;
}

/** The key node's field holding content key `keyId` wrapped to `reader`. */
export function wrapField(keyId, reader) {
  return `w:${hex(keyId)}:${hex(reader)}`;
}

/** {kind: 'r', reader} or {kind: 'w', reader, keyId} for a key node's field, or null. */
export function parseKeyField(field) {
  let match = READER_FIELD.exec(field);
  if (match) return { kind: 'r', reader: fromHex(match[1]), keyId: null };
  match = WRAP_FIELD.exec(field);
  if (match) return { kind: 'w', reader: fromHex(match[2]), keyId: fromHex(match[1]) };
  return null;
}

/** The bytes the author signs for a field. */
export function signingMessage(soul, field, state, body) {
  return concat(SIGN_DOMAIN, updateBytes(soul, field, state, body));
}

/** The Gun string a field of `identity`'s space holds: the body signed. */
export function sign(identity, soul, field, state, body) {
  const parsed = parseSoul(soul);
  if (parsed === null) throw new GraphValueError(`not a private soul: ${soul.slice(0, 80)}`);
  if (parsed.author !== identity.address) {
    throw new GraphValueError(`${soul.slice(0, 80)} belongs to ${parsed.author}, not ${identity.address}`);
  }
  const signature = identity.sign(signingMessage(soul, field, state, body));
  return TEXT_PREFIX + base64url(concat(identity.publicKey, signature, body));
}

/** {publicKey, signature, body} of a private field's string, or null when it is not of
 * the form `dtp/p1:<base64url>` (one canonical spelling). */
export function unpack(value) {
  if (typeof value !== 'string' || !value.startsWith(TEXT_PREFIX)) return null;
  const raw = fromBase64url(value.slice(TEXT_PREFIX.length));
  if (raw === null || raw.length <= SIGNED_LEN) return null;
  return { publicKey: raw.subarray(0, 32), signature: raw.subarray(32, SIGNED_LEN), body: raw.subarray(SIGNED_LEN) };
}

function bodyShape(parsed, field, body) {
  if (parsed.keys) {
    const kind = parseKeyField(field);
    if (kind === null) return false;
    if (kind.kind === 'r') return body.length === 2 && body[0] === READER && (body[1] === 0 || body[1] === 1);
    return body.length === WRAP_LEN && body[0] === WRAP;
  }
  const sealed = body.length - VALUE_HEADER - TAG_LEN;
  return body[0] === VALUE && sealed >= PAD && sealed % PAD === 0;
}

/** Why a field of a private soul must be refused (a reason of Python's), or null when it
 * is valid -- and for souls of other tiers. Needs no key: every peer runs it. */
export function check(soul, field, state, value) {
  if (!isPrivate(soul)) return null;
  const parsed = parseSoul(soul);
  if (parsed === null) return BAD_SOUL;
  const parts = unpack(value);
  if (parts === null) return UNSIGNED;
  if (suiAddress(parts.publicKey) !== parsed.author) return WRONG_KEY;
  if (!verifies(parts.signature, signingMessage(soul, field, state, parts.body), parts.publicKey)) return BAD_SIGNATURE;
  return bodyShape(parsed, field, parts.body) ? null : MALFORMED;
}

// -- values: encrypted under a content key -------------------------------------------

function valueAead(contentKey, keyId, nonce, aad) {
  return chacha20poly1305(expand(sha256, contentKey, concat(VALUE_LABEL, keyId, nonce), 32), ZERO_NONCE, aad);
}

/** The body of a value: `text` (its Gun text) encrypted under the content key, bound to
 * its soul, field and state (`nonce`: random unless given, as the docs' vectors do). */
export function sealValue(contentKey, keyId, soul, field, state, text, nonce = randomBytes(NONCE_LEN)) {
  const plain = utf8(text);
  if (plain.length > MAX_PLAINTEXT) {
    throw new GraphValueError(`a private value's Gun text is at most ${MAX_PLAINTEXT} bytes, not ${plain.length}`);
  }
  const header = concat(Uint8Array.of(VALUE), keyId, nonce);
  const padded = new Uint8Array(plain.length + ((PAD - (plain.length % PAD)) % PAD));
  padded.set(plain);
  const aad = concat(VALUE_LABEL, updateBytes(soul, field, state, header));
  return concat(header, valueAead(contentKey, keyId, nonce, aad).encrypt(padded));
}

/** The key id a value's body names, or null when it is no value's body. */
export function valueKeyId(body) {
  if (body.length < VALUE_HEADER + TAG_LEN || body[0] !== VALUE) return null;
  return body.subarray(1, 1 + KEY_ID_LEN);
}

/** The Gun text inside a value's body; PrivateDataError when it does not open under this
 * key for this soul, field and state. */
export function openValue(contentKey, soul, field, state, body) {
  const keyId = valueKeyId(body);
  if (keyId === null) throw new PrivateDataError(`${soul.slice(0, 80)}.${field.slice(0, 64)} holds no private value`);
  const nonce = body.subarray(1 + KEY_ID_LEN, VALUE_HEADER);
  const aad = concat(VALUE_LABEL, updateBytes(soul, field, state, body.subarray(0, VALUE_HEADER)));
  let padded;
  try {
    padded = valueAead(contentKey, keyId, nonce, aad).decrypt(body.subarray(VALUE_HEADER));
  } catch {
    throw new PrivateDataError(`${soul.slice(0, 80)}.${field.slice(0, 64)} fails authentication`);
  }
  let end = padded.length;
  while (end > 0 && padded[end - 1] === 0) end--; // (a Gun text never ends in a zero byte)
  return new TextDecoder().decode(padded.subarray(0, end));
}

// -- content keys, wrapped to each reader --------------------------------------------

/** A fresh {keyId, key}. */
export function newContentKey() {
  return { keyId: randomBytes(KEY_ID_LEN), key: randomBytes(32) };
}

function wrapAead(shared, ephemeral, reader, aad) {
  return chacha20poly1305(hkdf(sha256, shared, concat(ephemeral, reader), WRAP_LABEL, 32), ZERO_NONCE, aad);
}

/** The body of a wrap: `contentKey` encrypted to the X25519 key `reader` (`ephemeralSecret`:
 * fresh unless given, as the docs' vectors do). */
export function wrap(contentKey, reader, soul, field, state, ephemeralSecret = randomBytes(32)) {
  const ephemeral = x25519.getPublicKey(ephemeralSecret);
  let shared;
  try {
    shared = x25519.getSharedSecret(ephemeralSecret, reader);
  } catch {
    throw new GraphValueError(`not a usable X25519 public key: ${hex(reader)}`);
  }
  const head = concat(Uint8Array.of(WRAP), ephemeral);
  const aad = concat(WRAP_LABEL, updateBytes(soul, field, state, head));
  return concat(head, wrapAead(shared, ephemeral, reader, aad).encrypt(contentKey));
}

/** The content key inside a wrap to the reader whose X25519 secret is `readerSecret`;
 * PrivateDataError when it does not open. */
export function unwrap(readerSecret, soul, field, state, body) {
  if (body.length !== WRAP_LEN || body[0] !== WRAP) {
    throw new PrivateDataError(`${soul.slice(0, 80)}.${field.slice(0, 120)} holds no wrapped key`);
  }
  const ephemeral = body.subarray(1, 33);
  const reader = x25519.getPublicKey(readerSecret);
  const aad = concat(WRAP_LABEL, updateBytes(soul, field, state, body.subarray(0, 33)));
  try {
    const shared = x25519.getSharedSecret(readerSecret, ephemeral);
    return wrapAead(shared, ephemeral, reader, aad).decrypt(body.subarray(33));
  } catch {
    throw new PrivateDataError(`the key wrapped in ${soul.slice(0, 80)}.${field.slice(0, 120)} does not open`);
  }
}
