// What the graph's signed tiers are built on (docs/graph.md; docs/protocol.md 6.1, 6.9):
// a field's value as Gun text, the canonical HAM update encoding that signatures cover,
// unpadded base64url, and the UTF-16 order HAM breaks ties by.

import { concat, utf8 } from '../bytes.js';

/** A value a graph field holds (docs/graph.md, "Values"), or a reason it cannot. */
export class GraphValueError extends TypeError {
  constructor(message) {
    super(message);
    this.name = 'GraphValueError';
  }
}

/** A name (soul, field) as UTF-8; one holding a lone surrogate has no UTF-8 spelling. */
export function nameBytes(name, what = 'a name') {
  if (typeof name !== 'string' || name.length === 0) throw new GraphValueError(`${what} is a non-empty string`);
  if (!name.isWellFormed()) throw new GraphValueError(`${what} holds a lone surrogate: no UTF-8 spells it`);
  const bytes = utf8(name);
  if (bytes.length > 1024) throw new GraphValueError(`${what} is at most 1024 bytes of UTF-8`);
  return bytes;
}

/** Whether `value` is a link, `{"#": soul}`. */
export function isLink(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    !Array.isArray(value) &&
    Object.keys(value).length === 1 &&
    typeof value['#'] === 'string' &&
    value['#'].length > 0
  );
}

/** The Gun text of a value: what JSON.stringify writes for null, a boolean, a finite
 * number, a string or a link (the bytes peers store, sign and compare). */
export function gunText(value) {
  if (value === null || typeof value === 'boolean') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new GraphValueError(`${value} is no Gun value (numbers are finite)`);
    return JSON.stringify(value);
  }
  if (typeof value === 'string') {
    if (!value.isWellFormed()) throw new GraphValueError('a string holding a lone surrogate has no UTF-8 spelling');
    return JSON.stringify(value);
  }
  if (isLink(value)) {
    if (!value['#'].isWellFormed()) throw new GraphValueError('a link\'s soul holds a lone surrogate');
    return JSON.stringify({ '#': value['#'] });
  }
  throw new GraphValueError(
    `${Array.isArray(value) ? 'an array' : typeof value} is no Gun value (null, a boolean, a number, a string or a link {"#": soul})`,
  );
}

/** The value a Gun text holds (JSON.parse, refusing what no Gun peer holds). */
export function readText(text) {
  const value = JSON.parse(text);
  gunText(value); // (throws for arrays, objects other than links)
  return value;
}

/** Whether `text` is a value's Gun text exactly as Gun writes it (Python's is_gun_value:
 * not `1.0`, not `"\u0041"`), the only spelling a signed or sealed value may take. */
export function isGunText(text) {
  try {
    return gunText(JSON.parse(text)) === text;
  } catch {
    return false;
  }
}

/** The canonical HAM update encoding of one update (protocol.md 6.1, no batch header):
 * varint lengths, the state as f64le. `soul`, `field`: strings; `value`: bytes. */
export function updateBytes(soul, field, state, value) {
  const s = nameBytes(soul, 'a soul');
  const f = nameBytes(field, 'a field name');
  if (!Number.isFinite(state)) throw new GraphValueError('a state is a finite number');
  const st = new Uint8Array(8);
  new DataView(st.buffer).setFloat64(0, state + 0, true); // (-0 is the state 0)
  return concat(varint(s.length), s, varint(f.length), f, st, varint(value.length), value);
}

function varint(n) {
  // (QUIC's varints, protocol.md section 1: lengths here stay below 2^30)
  if (n < 64) return Uint8Array.of(n);
  if (n < 16384) return Uint8Array.of(0x40 | (n >> 8), n & 0xff);
  return Uint8Array.of(0x80 | (n >>> 24), (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Unpadded base64url. */
export function base64url(bytes) {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63] + B64URL[n & 63];
  }
  if (i + 1 === bytes.length) {
    const n = bytes[i] << 16;
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63];
  } else if (i + 2 === bytes.length) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63];
  }
  return out;
}

/** The bytes of unpadded base64url text, or null unless it is the one canonical
 * spelling of them (no padding, no unused low bits set). */
export function fromBase64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let acc = 0;
  let at = 0;
  for (const ch of text) {
    acc = (acc << 6) | B64URL.indexOf(ch);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 0xff;
    }
  }
  if ((acc & ((1 << bits) - 1)) !== 0) return null;
  return out;
}

/** A byte's rank in the UTF-16 order of protocol.md 6.3 (the order HAM breaks ties by). */
export function rank(b) {
  return b < 0xee ? b : b < 0xf0 ? b + 0x10 : b - 2;
}

/** Compare byte strings in that order: negative, 0 or positive. */
export function compareUtf16(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return rank(a[i]) - rank(b[i]);
  }
  return a.length - b.length;
}
