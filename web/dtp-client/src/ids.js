// Sui object IDs as a page holds them (docs/web-frontend.md): "0x" and up to 64 hex
// digits (short forms left-padded, as Sui prints 0x6), the same without "0x", or the 32
// bytes. A DTP connection ID (the `cid` of connect(), docs/protocol.md section 8.2) is
// its TransportControl's object ID. Nothing here needs the Sui SDK.

import { fromHex } from './bytes.js';

function shown(value) {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  return value === null ? 'null' : typeof value === 'object' ? (value.constructor?.name ?? 'an object') : String(value);
}

/** The 32 bytes of an object ID: a hex string with or without "0x" (1 to 64 digits,
 * left-padded), a Uint8Array or ArrayBuffer of 32 bytes. Anything else is a TypeError
 * that names what it got (`what`: what the ID is for). */
export function objectIdBytes(id, what = 'an object ID') {
  if (id instanceof ArrayBuffer) id = new Uint8Array(id);
  if (id instanceof Uint8Array) {
    if (id.length !== 32) throw new TypeError(`${what} is 32 bytes, got ${id.length}`);
    return id;
  }
  if (typeof id !== 'string') {
    throw new TypeError(`${what} is a hex string ("0x" and up to 64 hex digits) or 32 bytes, got ${shown(id)}`);
  }
  const clean = id.startsWith('0x') || id.startsWith('0X') ? id.slice(2) : id;
  if (clean.length === 0 || clean.length > 64 || /[^0-9a-fA-F]/.test(clean)) {
    throw new TypeError(`${what} is "0x" and 1 to 64 hex digits (or the 32 bytes), got ${shown(id)}`);
  }
  return fromHex(clean.padStart(64, '0'));
}

/** The `cid` connect() sends for a ledger connection: its TransportControl's object ID
 * (as the open transaction's `ConnectionOpened` event names it, "0x..."), as 32 bytes. */
export function connectionCid(connection) {
  return objectIdBytes(connection, 'a connection ID');
}
