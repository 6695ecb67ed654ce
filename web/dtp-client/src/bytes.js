// Byte helpers: hex, concatenation and the fixed-width little-endian integers of
// docs/protocol.md section 1.

export function hex(bytes) {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

export function fromHex(text) {
  if (text.length % 2 !== 0 || /[^0-9a-fA-F]/.test(text)) throw new TypeError(`not hex: ${text}`);
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function u16le(n) {
  return Uint8Array.of(n & 0xff, (n >>> 8) & 0xff);
}

/** u64le of a Number or BigInt in 0 ..= 2^64 - 1. */
export function u64le(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  return out;
}

export function readU16le(bytes, at) {
  return bytes[at] | (bytes[at + 1] << 8);
}

/** The u64le at `at`, as a BigInt (counters reach 2^64 - 2). */
export function readU64le(bytes, at) {
  // (two 32-bit halves and one BigInt, not a DataView: a record header's counter, read
  // for every record received)
  if (at < 0 || at + 8 > bytes.length) throw new RangeError(`no 8 bytes at ${at}`);
  const lo = (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0;
  const hi = (bytes[at + 4] | (bytes[at + 5] << 8) | (bytes[at + 6] << 16) | (bytes[at + 7] << 24)) >>> 0;
  if (hi < 0x200000) return BigInt(hi * 4294967296 + lo); // (exact below 2^53)
  return (BigInt(hi) << 32n) | BigInt(lo);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: false });

export function utf8(text) {
  return encoder.encode(text);
}

// Short arrays of the package's own (a record sealed, a record's plaintext opened, a
// string written to a stream) are cut from a shared ArrayBuffer rather than made each
// with a buffer of its own: a new buffer is an allocation outside the JavaScript heap,
// which the collector then tracks, about 0.6-1 µs each in Chromium against 0.1 for a view
// of one already made (bench/client.js). Pieces are only for arrays the package keeps to
// itself and hands on as views (a sealed record to WebSocket.send, a written string's
// UTF-8 to a seal), never for what the application is given: through a piece's `.buffer`
// it could read other pieces' bytes, or detach the slab by transferring it. A piece is
// handed out once and never written again by the package. A piece kept keeps its slab
// (SLAB_SIZE bytes) alive.
const SLAB_SIZE = 16384;
/** The longest piece cut from a slab; a longer array has a buffer of its own. */
export const SLAB_PIECE = 2048;
let slab = null;
let slabAt = SLAB_SIZE; // (the first piece makes the first slab)

/** A new zeroed Uint8Array of `n` bytes, a piece of a shared ArrayBuffer when short. */
export function newBytes(n) {
  if (n > SLAB_PIECE || n === 0) return new Uint8Array(n);
  if (slabAt + n > SLAB_SIZE) {
    slab = new ArrayBuffer(SLAB_SIZE);
    slabAt = 0;
  }
  const out = new Uint8Array(slab, slabAt, n);
  slabAt += (n + 7) & ~7; // (pieces start 8-aligned, as a buffer of their own does)
  return out;
}

const ASCII_LOOP = 256;

/** The UTF-8 of `text` as newBytes makes arrays (utf8's bytes): what a stream sends for
 * a string written to it. */
export function utf8Piece(text) {
  const n = text.length;
  const most = 3 * n; // (a UTF-16 code unit is at most 3 bytes of UTF-8)
  if (n === 0 || most > SLAB_PIECE) return encoder.encode(text);
  if (slabAt + most > SLAB_SIZE) {
    slab = new ArrayBuffer(SLAB_SIZE);
    slabAt = 0;
  }
  const room = new Uint8Array(slab, slabAt, most);
  // A short ASCII text (a JSON-RPC request, mostly) byte for byte: Chromium's encodeInto
  // costs about as much as the loop for one of 100 characters, mostly in making its
  // result object; anything else by the encoder, which replaces a lone surrogate as
  // encode() does and writes no more than it says (the rest of the room stays zero).
  let written = 0;
  if (n <= ASCII_LOOP) {
    for (; written < n; written++) {
      const c = text.charCodeAt(written);
      if (c >= 0x80) break;
      room[written] = c;
    }
  }
  if (written < n) written = encoder.encodeInto(text, room).written;
  slabAt += (written + 7) & ~7;
  return room.subarray(0, written);
}

export function fromUtf8(bytes) {
  return decoder.decode(bytes);
}

/** Any binary the platform hands over (ArrayBuffer, a view, a Node Buffer) as a Uint8Array. */
export function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('expected bytes (Uint8Array or ArrayBuffer)');
}

export function base64Decode(text) {
  if (typeof atob === 'function') {
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  return new Uint8Array(Buffer.from(text, 'base64'));
}
