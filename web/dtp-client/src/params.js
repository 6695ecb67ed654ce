// Transport parameters (docs/protocol.md section 8.2): one msgpack map with string keys,
// written in the table's key order with msgpack's shortest forms; read strictly for the
// listed keys and tolerantly for any other.

import { concat, fromUtf8, utf8 } from './bytes.js';
import { HandshakeError } from './errors.js';

/** The highest transport version spoken (section 8.2): 2 takes identity proofs of every
 * Sui scheme, 1 the Ed25519 one only (what a client whose proof is Ed25519 offers). */
export const TRANSPORT_VERSION = 2;
export const DEFAULT_PARAMS = Object.freeze({ v: 1, md: 8388608, msd: 4194304, ms: 128, it: 60000 });
const INT_KEYS = ['v', 'md', 'msd', 'ms', 'it'];
const ORDER = ['v', 'md', 'msd', 'ms', 'it', 'auth', 'cid', 'port'];
// the sizes a bin may have: `auth` 1 ..= 3840 (section 8.4), `cid` 32
const BIN_SIZES = { auth: [1, 3840], cid: [32, 32] };
const LIMIT = 1n << 62n;

function encodeUint(n) {
  const v = BigInt(n);
  if (v < 0n || v >= LIMIT) throw new RangeError(`parameter ${n} is not in 0 ..= 2^62 - 1`);
  if (v < 128n) return Uint8Array.of(Number(v));
  const width = v < 0x100n ? 1 : v < 0x10000n ? 2 : v < 0x100000000n ? 4 : 8;
  const out = new Uint8Array(1 + width);
  out[0] = { 1: 0xcc, 2: 0xcd, 4: 0xce, 8: 0xcf }[width];
  let rest = v;
  for (let i = width; i >= 1; i--) {
    out[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  return out;
}

function encodeStr(text) {
  const bytes = utf8(text);
  if (bytes.length > 31) throw new RangeError('parameter keys are short');
  return concat(Uint8Array.of(0xa0 | bytes.length), bytes);
}

function encodeBin(bytes) {
  if (bytes.length > 0xffff) throw new RangeError('parameter bins are short');
  if (bytes.length > 255) return concat(Uint8Array.of(0xc5, bytes.length >> 8, bytes.length & 0xff), bytes);
  return concat(Uint8Array.of(0xc4, bytes.length), bytes);
}

/** Encodes {v, md, msd, ms, it, auth?, cid?, port?} (byte strings as Uint8Array). */
export function encodeParams(params) {
  const parts = [];
  let n = 0;
  for (const key of ORDER) {
    const value = params[key];
    if (value === undefined || value === null) continue;
    n++;
    parts.push(encodeStr(key), key in BIN_SIZES ? encodeBin(value) : encodeUint(value));
  }
  return concat(Uint8Array.of(0x80 | n), ...parts);
}

function bad(message) {
  return new HandshakeError(`transport parameters: ${message}`);
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.at = 0;
  }

  need(n) {
    if (this.at + n > this.bytes.length) throw bad('a length runs past the payload');
  }

  byte() {
    this.need(1);
    return this.bytes[this.at++];
  }

  uint(width) {
    this.need(width);
    let v = 0n;
    for (let i = 0; i < width; i++) v = (v << 8n) | BigInt(this.bytes[this.at++]);
    return v;
  }

  take(n) {
    this.need(n);
    const out = this.bytes.slice(this.at, this.at + n);
    this.at += n;
    return out;
  }

  /** A str's raw bytes, or null (and nothing read) if the next object is no str. */
  str() {
    const t = this.bytes[this.at];
    let len;
    if (t >= 0xa0 && t <= 0xbf) {
      this.at++;
      len = t & 0x1f;
    } else if (t >= 0xd9 && t <= 0xdb) {
      this.at++;
      len = Number(this.uint(1 << (t - 0xd9)));
    } else {
      return null;
    }
    return this.take(len);
  }

  /** An integer of any msgpack width, as a BigInt; null if the next object is no integer. */
  int() {
    const t = this.bytes[this.at];
    if (t <= 0x7f) return BigInt(this.bytes[this.at++]);
    if (t >= 0xe0) {
      this.at++;
      return BigInt(t - 0x100);
    }
    if (t >= 0xcc && t <= 0xcf) {
      this.at++;
      return this.uint(1 << (t - 0xcc));
    }
    if (t >= 0xd0 && t <= 0xd3) {
      this.at++;
      const width = 1 << (t - 0xd0);
      return BigInt.asIntN(8 * width, this.uint(width));
    }
    return null;
  }

  bin() {
    const t = this.bytes[this.at];
    if (t < 0xc4 || t > 0xc6) return null;
    this.at++;
    return this.take(Number(this.uint(1 << (t - 0xc4))));
  }

  /** Skips one well-formed object, however nested, without judging what is inside it. */
  skip() {
    let pending = 1;
    while (pending > 0) {
      pending--;
      const t = this.byte();
      if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) continue;
      if (t >= 0x80 && t <= 0x8f) pending += 2 * (t & 0x0f);
      else if (t >= 0x90 && t <= 0x9f) pending += t & 0x0f;
      else if (t >= 0xa0 && t <= 0xbf) this.take(t & 0x1f);
      else if (t === 0xc1) throw bad('reserved msgpack type 0xc1');
      else if (t >= 0xc4 && t <= 0xc6) this.take(Number(this.uint(1 << (t - 0xc4))));
      else if (t >= 0xc7 && t <= 0xc9) this.take(Number(this.uint(1 << (t - 0xc7))) + 1);
      else if (t === 0xca) this.take(4);
      else if (t === 0xcb) this.take(8);
      else if (t >= 0xcc && t <= 0xcf) this.take(1 << (t - 0xcc));
      else if (t >= 0xd0 && t <= 0xd3) this.take(1 << (t - 0xd0));
      else if (t >= 0xd4 && t <= 0xd8) this.take((1 << (t - 0xd4)) + 1);
      else if (t >= 0xd9 && t <= 0xdb) this.take(Number(this.uint(1 << (t - 0xd9))));
      else if (t === 0xdc || t === 0xdd) pending += Number(this.uint(t === 0xdc ? 2 : 4));
      else if (t === 0xde || t === 0xdf) pending += 2 * Number(this.uint(t === 0xde ? 2 : 4));
    }
  }
}

/** Decodes a parameter map by the rules of section 8.2. Integers come back as Numbers,
 * `auth` and `cid` as Uint8Arrays; keys not listed are dropped. Throws HandshakeError. */
export function decodeParams(payload) {
  const r = new Reader(payload);
  if (payload.length === 0) throw bad('empty');
  const t = r.byte();
  let count;
  if (t >= 0x80 && t <= 0x8f) count = t & 0x0f;
  else if (t === 0xde) count = Number(r.uint(2));
  else if (t === 0xdf) count = Number(r.uint(4));
  else throw bad('not a msgpack map');
  const out = {};
  for (let i = 0; i < count; i++) {
    if (r.at >= payload.length) throw bad('the map ends early');
    const raw = r.str();
    if (raw === null) throw bad('a key that is not a str');
    const key = fromUtf8(raw);
    const listed = ORDER.includes(key) && raw.length === utf8(key).length;
    if (!listed) {
      r.skip();
      continue;
    }
    if (key in out) throw bad(`"${key}" twice`);
    if (r.at >= payload.length) throw bad('the map ends early');
    if (key in BIN_SIZES) {
      const value = r.bin();
      const [least, most] = BIN_SIZES[key];
      if (value === null || value.length < least || value.length > most) {
        throw bad(`"${key}" is not a bin of ${least === most ? least : `${least} to ${most}`} bytes`);
      }
      out[key] = value;
    } else {
      const value = r.int();
      if (value === null) throw bad(`"${key}" is not an integer`);
      if (value < 0n || value >= LIMIT) throw bad(`"${key}" = ${value} is out of range`);
      if (key === 'port' && value > 65535n) throw bad(`"port" = ${value} is above 65535`);
      out[key] = Number(value);
    }
  }
  if (r.at !== payload.length) throw bad('bytes after the map');
  for (const key of INT_KEYS) if (!(key in out)) throw bad(`"${key}" is missing`);
  return out;
}
