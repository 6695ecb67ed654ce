// Frames, the plaintext of a DATA record (docs/protocol.md section 3): encoding (3.3) and
// decoding of complete record bodies (3.2). A frame is {type, a, b, c, data, ranges}, the
// slots of section 3; ACK ranges are [[lo, hi], ...], largest first.

import { concat } from './bytes.js';
import { ProtocolError, CloseCode } from './errors.js';
import { VARINT_MAX, decodeVarint, encodeVarint, narrow } from './varint.js';

export const FrameType = Object.freeze({
  PADDING: 0x00,
  PING: 0x01,
  ACK: 0x02,
  MAX_DATA: 0x03,
  MAX_STREAM_DATA: 0x04,
  RESET_STREAM: 0x05,
  STOP_SENDING: 0x06,
  MAX_STREAMS: 0x07,
  STREAM: 0x08,
  STREAM_FIN: 0x09,
  CLOSE: 0x0a,
  RECEIPT: 0x0b,
  CONTROL: 0x0c,
  DATAGRAM: 0x0d,
});

export const MAX_FRAME_DATA = 16384;
export const MAX_CLOSE_REASON = 1024;
export const MAX_RECEIPT = 1024;
export const MAX_ACK_RANGES = 256;

/** CONTROL kinds of the handshake (section 8.4); 16 and up belong to the layers above. */
export const CONTROL_AUTH = 1;
export const CONTROL_ACCEPT = 2;

// type -> [number of varint slots, data cap or null]
const SHAPES = {
  0x01: [0, null],
  0x03: [1, null],
  0x04: [2, null],
  0x05: [3, null],
  0x06: [2, null],
  0x07: [1, null],
  0x08: [2, MAX_FRAME_DATA],
  0x09: [2, MAX_FRAME_DATA],
  0x0a: [1, MAX_CLOSE_REASON],
  0x0b: [0, MAX_RECEIPT],
  0x0c: [1, MAX_FRAME_DATA],
  0x0d: [0, MAX_FRAME_DATA],
};

const EMPTY = new Uint8Array(0);
// (a decoded frame other than an ACK has no ranges: one frozen empty list for all)
const NO_RANGES = Object.freeze([]);

function fail(detail, message) {
  return new ProtocolError(detail, message, CloseCode.FRAME_ENCODING_ERROR);
}

function valueError(message) {
  // FRAME_VALUE is a protocol violation once the record is authenticated (section 11)
  return new ProtocolError('FRAME_VALUE', message, CloseCode.PROTOCOL_VIOLATION);
}

/** A frame with the unused slots filled in. */
export function frame(type, fields = {}) {
  return { type, a: 0, b: 0, c: 0, data: EMPTY, ranges: [], ...fields };
}

function toBig(v) {
  return typeof v === 'bigint' ? v : BigInt(v);
}

function checkVarint(v) {
  if (!(typeof v === 'bigint' || Number.isInteger(v)) || toBig(v) < 0n || toBig(v) > VARINT_MAX) {
    throw new ProtocolError('VARINT', `${v} is not in 0 ..= 2^62 - 1`);
  }
}

/** Encodes frames in order (section 3.3); the first invalid frame throws and nothing is returned. */
export function encodeFrames(frames, scratch = null) {
  if (frames.length === 1) return encodeFrame(frames[0], scratch);
  const parts = [];
  for (const f of frames) parts.push(encodeFrame(f));
  return concat(...parts);
}

/** The size of a varint of a Number known to be in 0 ..= 2^53 - 1 (section 1). */
function sizeOf(v) {
  return v < 64 ? 1 : v < 16384 ? 2 : v < 1073741824 ? 4 : 8;
}

/** Writes `v` (a Number in 0 ..= 2^53 - 1) at `at` as a varint of `size` bytes. */
function putVarint(out, at, v, size) {
  if (size === 1) {
    out[at] = v;
  } else if (size === 2) {
    out[at] = 0x40 | (v >>> 8);
    out[at + 1] = v & 0xff;
  } else if (size === 4) {
    out[at] = 0x80 | (v >>> 24);
    out[at + 1] = (v >>> 16) & 0xff;
    out[at + 2] = (v >>> 8) & 0xff;
    out[at + 3] = v & 0xff;
  } else {
    const hi = Math.floor(v / 4294967296);
    const lo = v >>> 0;
    out[at] = 0xc0 | (hi >>> 24);
    out[at + 1] = (hi >>> 16) & 0xff;
    out[at + 2] = (hi >>> 8) & 0xff;
    out[at + 3] = hi & 0xff;
    out[at + 4] = lo >>> 24;
    out[at + 5] = (lo >>> 16) & 0xff;
    out[at + 6] = (lo >>> 8) & 0xff;
    out[at + 7] = lo & 0xff;
  }
}

function isCount(v) {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** A STREAM or STREAM_FIN frame whose ID and offset are Numbers (every stream's, short of
 * 2^53 bytes): the bytes encodeFrame's general path makes, written into one buffer. */
function encodeStreamFrame(type, id, offset, data, scratch) {
  if (data.length > MAX_FRAME_DATA) throw fail('FRAME_SIZE', `${data.length} bytes of data`);
  if (!Number.isSafeInteger(offset + data.length)) return null; // (the general path judges it)
  const sa = sizeOf(id);
  const sb = sizeOf(offset);
  const sl = sizeOf(data.length);
  const size = 1 + sa + sb + sl + data.length;
  const out = scratch !== null && scratch.length >= size ? scratch.subarray(0, size) : new Uint8Array(size);
  out[0] = type;
  putVarint(out, 1, id, sa);
  putVarint(out, 1 + sa, offset, sb);
  putVarint(out, 1 + sa + sb, data.length, sl);
  out.set(data, 1 + sa + sb + sl);
  return out;
}

/** One frame's bytes; a STREAM frame goes into `scratch` where given and large enough (a
 * view of it, valid until the next use: for a caller that seals it at once). */
export function encodeFrame(f, scratch = null) {
  const { type } = f;
  if ((type === FrameType.STREAM || type === FrameType.STREAM_FIN) && isCount(f.a) && isCount(f.b ?? 0)
      && !f.c && !(f.ranges?.length)) {
    const fast = encodeStreamFrame(type, f.a, f.b ?? 0, f.data ?? EMPTY, scratch);
    if (fast !== null) return fast;
  }
  const a = f.a ?? 0;
  const b = f.b ?? 0;
  const c = f.c ?? 0;
  const data = f.data ?? EMPTY;
  const ranges = f.ranges ?? [];
  if (!Number.isInteger(type) || type < 0 || type > 0x0d) throw fail('FRAME_TYPE', `type ${type}`);
  if (type === FrameType.PADDING) {
    if (b != 0 || c != 0 || data.length || ranges.length) throw valueError('PADDING uses only a');
    if (!Number.isInteger(a) || a < 1 || a > MAX_FRAME_DATA) throw valueError(`PADDING run ${a}`);
    return new Uint8Array(a);
  }
  if (type === FrameType.ACK) {
    if (a != 0 || b != 0 || data.length) throw valueError('ACK uses c and ranges only');
    checkVarint(c);
    if (ranges.length === 0) throw valueError('ACK without ranges');
    if (ranges.length > MAX_ACK_RANGES) throw fail('FRAME_SIZE', `${ranges.length} ACK ranges`);
    let prevLo = null;
    const parts = [Uint8Array.of(type)];
    for (const [loRaw, hiRaw] of ranges) {
      const lo = toBig(loRaw);
      const hi = toBig(hiRaw);
      if (lo < 0n || lo > hi || hi > VARINT_MAX) throw valueError(`ACK range ${lo}..${hi}`);
      if (prevLo === null) {
        parts.push(encodeVarint(hi), encodeVarint(c), encodeVarint(ranges.length), encodeVarint(hi - lo));
      } else {
        if (hi > prevLo - 2n) throw valueError('ACK ranges overlap or touch');
        parts.push(encodeVarint(prevLo - hi - 2n), encodeVarint(hi - lo));
      }
      prevLo = lo;
    }
    return concat(...parts);
  }
  const [slots, cap] = SHAPES[type];
  const values = [a, b, c];
  for (let i = slots; i < 3; i++) if (values[i] != 0) throw valueError(`slot ${'abc'[i]} unused by type ${type}`);
  if (ranges.length) throw valueError('only an ACK has ranges');
  if (cap === null && data.length) throw valueError(`type ${type} carries no data`);
  for (let i = 0; i < slots; i++) checkVarint(values[i]);
  if (cap !== null && data.length > cap) throw fail('FRAME_SIZE', `${data.length} bytes of data`);
  if ((type === FrameType.STREAM || type === FrameType.STREAM_FIN) && toBig(b) + BigInt(data.length) > VARINT_MAX) {
    throw valueError('stream offset + length beyond 2^62 - 1');
  }
  const parts = [Uint8Array.of(type)];
  for (let i = 0; i < slots; i++) parts.push(encodeVarint(values[i]));
  if (cap !== null) parts.push(encodeVarint(data.length), data);
  return concat(...parts);
}

/** Where decodeFrames is in its body: readVarint moves it on (one cursor for the module,
 * not a closure made for each body; decoding calls nothing that decodes). */
const CURSOR = { at: 0 };

/** The varint of `body` at CURSOR.at, which it moves past it (FRAME_TRUNCATED if the
 * body ends inside it). */
function readVarint(body) {
  const at = CURSOR.at;
  const first = body[at];
  const size = 1 << (first >> 6);
  if (size === 1 && at < body.length) {
    CURSOR.at = at + 1;
    return first;
  }
  if (size === 2 && at + 2 <= body.length) {
    CURSOR.at = at + 2;
    return ((first & 0x3f) << 8) | body[at + 1];
  }
  const r = decodeVarint(body, at);
  if (r === null) throw fail('FRAME_TRUNCATED', 'the body ends inside a frame');
  CURSOR.at = r[1];
  return r[0];
}

/** Decodes a complete record body into its frames (section 3.2); any error throws a
 * ProtocolError whose `detail` is the section's code. A frame's data is a copy, or with
 * `views` a view of `body` (for a body of the caller's own: a record's plaintext, which
 * nothing writes to again). */
export function decodeFrames(body, views = false) {
  const frames = [];
  const cursor = CURSOR;
  cursor.at = 0;
  while (cursor.at < body.length) {
    const type = body[cursor.at];
    if (type === 0) {
      let end = cursor.at;
      while (end < body.length && body[end] === 0) end++;
      frames.push(frame(0, { a: end - cursor.at }));
      cursor.at = end;
      continue;
    }
    if (type > 0x0d) throw fail('FRAME_TYPE', `type 0x${type.toString(16)}`);
    cursor.at++;
    if (type === FrameType.ACK) {
      const largest = toBig(readVarint(body));
      const delay = readVarint(body);
      const count = readVarint(body);
      if (count === 0) throw valueError('ACK range count 0');
      if (count > MAX_ACK_RANGES) throw fail('FRAME_SIZE', `${count} ACK ranges`);
      const first = toBig(readVarint(body));
      if (first > largest) throw valueError('ACK first range below 0');
      const ranges = [[narrow(largest - first), narrow(largest)]];
      let lo = largest - first;
      for (let i = 1; i < count; i++) {
        const gap = toBig(readVarint(body));
        if (lo < gap + 2n) throw valueError('ACK gap below 0');
        const hi = lo - gap - 2n;
        const len = toBig(readVarint(body));
        if (len > hi) throw valueError('ACK range below 0');
        lo = hi - len;
        ranges.push([narrow(lo), narrow(hi)]);
      }
      frames.push(frame(type, { c: delay, ranges }));
      continue;
    }
    const [slots, cap] = SHAPES[type];
    const a = slots > 0 ? readVarint(body) : 0;
    const b = slots > 1 ? readVarint(body) : 0;
    const c = slots > 2 ? readVarint(body) : 0;
    let data = EMPTY;
    if (cap !== null) {
      const len = readVarint(body);
      if (len > cap) throw fail('FRAME_SIZE', `${len} bytes of data (at most ${cap})`);
      // (an offset that is a Number is below 2^53: only a BigInt one can pass 2^62 - 1)
      if ((type === FrameType.STREAM || type === FrameType.STREAM_FIN) && typeof b === 'bigint'
          && b + BigInt(len) > VARINT_MAX) {
        throw valueError('stream offset + length beyond 2^62 - 1');
      }
      if (cursor.at + len > body.length) throw fail('FRAME_TRUNCATED', 'the body ends inside a frame');
      data = views ? body.subarray(cursor.at, cursor.at + len) : body.slice(cursor.at, cursor.at + len);
      cursor.at += len;
    }
    frames.push({ type, a, b, c, data, ranges: NO_RANGES });
  }
  return frames;
}
