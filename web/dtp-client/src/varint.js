// QUIC variable-length integers (RFC 9000 section 16; docs/protocol.md section 1).
// Values up to 2^53 - 1 are Numbers; larger ones (up to 2^62 - 1) are BigInts, so that
// every value survives a decode and encode unchanged.

import { ProtocolError } from './errors.js';

export const VARINT_MAX = (1n << 62n) - 1n;

function big(value) {
  if (typeof value === 'bigint') return value;
  if (!Number.isInteger(value)) return -1n;
  return BigInt(value);
}

/** The value as a Number when it is exactly one, else as a BigInt. */
export function narrow(value) {
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

export function varintSize(value) {
  const v = big(value);
  if (v < 0n || v > VARINT_MAX) throw new ProtocolError('VARINT', `${value} is not in 0 ..= 2^62 - 1`);
  return v < 64n ? 1 : v < 16384n ? 2 : v < 1073741824n ? 4 : 8;
}

/** The shortest encoding of `value` (Number or BigInt). */
export function encodeVarint(value) {
  const size = varintSize(value);
  let v = big(value);
  const out = new Uint8Array(size);
  for (let i = size - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  out[0] |= [0, 0x40, 0, 0x80, 0, 0, 0, 0xc0][size - 1];
  return out;
}

/** Decodes the varint at `at`: [value, next offset], or null when the bytes end inside it.
 * Longer forms than needed are accepted (section 1). */
export function decodeVarint(bytes, at) {
  if (at >= bytes.length) return null;
  const size = 1 << (bytes[at] >> 6);
  if (at + size > bytes.length) return null;
  if (size <= 4) {
    let v = bytes[at] & 0x3f;
    for (let i = 1; i < size; i++) v = v * 256 + bytes[at + i];
    return [v, at + size];
  }
  let v = BigInt(bytes[at] & 0x3f);
  for (let i = 1; i < size; i++) v = (v << 8n) | BigInt(bytes[at + i]);
  return [narrow(v), at + size];
}
