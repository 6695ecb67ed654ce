// Records (docs/protocol.md section 2) and their protection (section 4): a 12-byte header,
// then a body; DATA bodies are ChaCha20-Poly1305 with the header as associated data and
// the counter, from the header, as the nonce.

import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { concat, newBytes, readU16le, readU64le, u16le, u64le } from './bytes.js';
import { CloseCode, DecryptionError, ProtocolError } from './errors.js';

/** ChaCha20-Poly1305 (RFC 8439) as the records use it: `sealInto` writes the ciphertext
 * and its tag into `out`; `open` returns the plaintext, or throws when the tag is wrong. */
export const NOBLE_AEAD = Object.freeze({
  name: '@noble/ciphers',
  sealInto(key, nonce, ad, plaintext, out) {
    chacha20poly1305(key, nonce, ad).encrypt(plaintext, out);
  },
  open(key, nonce, ad, ciphertext) {
    return chacha20poly1305(key, nonce, ad).decrypt(ciphertext);
  },
});

/** libsodium itself where it loaded (SODIUM_AEAD's), else null: receipt.js signs
 * receipts with its Ed25519 (about a tenth of @noble/curves' time a signature). */
export let SODIUM = null;

/** The same AEAD from libsodium (its C compiled to WebAssembly, `libsodium-wrappers`), or
 * null where that package does not load (a page whose import map leaves it out) or is
 * not ready within 15 s: every module that imports this one waits for it, so a
 * WebAssembly instance that never comes must not hold the page (the records are the same
 * bytes either way). For a short record it takes about a fifth of @noble/ciphers' CPU,
 * which made up most of a short call's JavaScript work (docs/benchmarks.md,
 * `ws_rpc_roundtrip`). */
export const SODIUM_AEAD = await withinTime(loadSodium(), 15000);

function withinTime(promise, ms) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(resolve, ms, null);
    timer.unref?.(); // (node: the wait keeps no script alive)
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function loadSodium() {
  let sodium;
  try {
    const module = await import('libsodium-wrappers');
    sodium = module.default ?? module;
    await sodium.ready;
  } catch {
    return null;
  }
  SODIUM = sodium;
  const wrapped = Object.freeze({
    name: 'libsodium',
    sealInto(key, nonce, ad, plaintext, out) {
      out.set(sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, key));
    },
    open(key, nonce, ad, ciphertext) {
      return sodium.crypto_aead_chacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, key);
    },
  });
  return rawSodium(sodium.libsodium, wrapped) ?? wrapped;
}

/** libsodium's two AEAD functions called directly, their inputs and output in one area of
 * its WebAssembly memory taken once: the wrappers above allocate and free each argument
 * and copy the output into a new array on every call, as much work as the cipher itself
 * for a short record. Null where the module does not expose them. */
function rawSodium(lib, wrapped) {
  const need = ['_malloc', '_crypto_aead_chacha20poly1305_ietf_encrypt', '_crypto_aead_chacha20poly1305_ietf_decrypt'];
  if (!lib || !lib.HEAPU8 || need.some((name) => typeof lib[name] !== 'function')) return null;
  const MAX_TEXT = 16384 + 16; // a whole record body (MAX_RECORD_PLAINTEXT + TAG_SIZE)
  // (the output area holds a tag past the largest input: a seal writes text + 16)
  const base = lib._malloc(32 + 12 + 12 + 2 * MAX_TEXT + 16);
  if (!base) return null;
  const KEY = base;
  const NONCE = KEY + 32;
  const AD = NONCE + 12;
  const IN = AD + 12;
  const OUT = IN + MAX_TEXT;
  // (anything but a record's key, nonce, header and body goes through the wrappers, which
  // check it: tests, never records)
  const fits = (key, nonce, ad, text) => key.length === 32 && nonce.length === 12 && ad.length === 12
    && text.length <= MAX_TEXT;
  const load = (key, nonce, ad, text) => {
    const heap = lib.HEAPU8; // (looked up each call: a grown memory is a new view)
    heap.set(key, KEY);
    heap.set(nonce, NONCE);
    heap.set(ad, AD);
    heap.set(text, IN);
  };
  // (the key is not left in the module's memory between calls)
  const wipe = () => lib.HEAPU8.fill(0, KEY, NONCE);
  // A whole record's way in: its header and body copied in one set (the header lands on
  // AD, the body right behind it on IN), the nonce copied from the header's counter
  // within the module's memory (section 4.1) -- no view of the record made for either.
  const loadRecord = (key, heap) => {
    heap.set(key, KEY);
    heap.fill(0, NONCE, NONCE + 4);
    heap.copyWithin(NONCE + 4, AD + 4, AD + HEADER_SIZE);
  };
  return Object.freeze({
    name: 'libsodium',
    /** Seals `plaintext` into `record` (its header written, its body sized for it). */
    sealRecordInto(key, record, plaintext) {
      if (key.length !== 32 || plaintext.length > MAX_TEXT - 16) {
        wrapped.sealInto(key, nonceOf(record), record.subarray(0, HEADER_SIZE), plaintext, record.subarray(HEADER_SIZE));
        return;
      }
      const heap = lib.HEAPU8;
      for (let i = 0; i < HEADER_SIZE; i++) heap[AD + i] = record[i];
      heap.set(plaintext, IN);
      loadRecord(key, heap);
      lib._crypto_aead_chacha20poly1305_ietf_encrypt(OUT, 0, IN, plaintext.length, 0, AD, 12, 0, 0, NONCE, KEY);
      wipe();
      record.set(lib.HEAPU8.subarray(OUT, OUT + plaintext.length + 16), HEADER_SIZE);
    },
    /** The plaintext of `record`, exactly a header and a body of `bodyLength` bytes. */
    openRecord(key, record, bodyLength) {
      if (key.length !== 32 || bodyLength > MAX_TEXT || bodyLength < 16 || record.length !== HEADER_SIZE + bodyLength) {
        return wrapped.open(key, nonceOf(record), record.subarray(0, HEADER_SIZE),
          record.subarray(HEADER_SIZE, HEADER_SIZE + bodyLength));
      }
      const heap = lib.HEAPU8;
      heap.set(record, AD);
      loadRecord(key, heap);
      const rc = lib._crypto_aead_chacha20poly1305_ietf_decrypt(OUT, 0, 0, IN, bodyLength, 0, AD, 12, 0, NONCE, KEY);
      wipe();
      if (rc !== 0) throw new Error('ciphertext cannot be decrypted using that key');
      // (a buffer of its own, not a piece of a shared one: what is read out of it goes to
      // the application, whose .buffer must hold nothing else -- bytes.js)
      return lib.HEAPU8.slice(OUT, OUT + bodyLength - 16);
    },
    sealInto(key, nonce, ad, plaintext, out) {
      if (!fits(key, nonce, ad, plaintext)) {
        wrapped.sealInto(key, nonce, ad, plaintext, out);
        return;
      }
      load(key, nonce, ad, plaintext);
      // (the i64 lengths are passed as two i32 halves: the module is built without BigInt
      // arguments, as the wrappers call it)
      lib._crypto_aead_chacha20poly1305_ietf_encrypt(OUT, 0, IN, plaintext.length, 0, AD, 12, 0, 0, NONCE, KEY);
      wipe();
      out.set(lib.HEAPU8.subarray(OUT, OUT + plaintext.length + 16));
    },
    open(key, nonce, ad, ciphertext) {
      if (!fits(key, nonce, ad, ciphertext) || ciphertext.length < 16) return wrapped.open(key, nonce, ad, ciphertext);
      load(key, nonce, ad, ciphertext);
      const rc = lib._crypto_aead_chacha20poly1305_ietf_decrypt(OUT, 0, 0, IN, ciphertext.length, 0, AD, 12, 0, NONCE, KEY);
      wipe();
      if (rc !== 0) throw new Error('ciphertext cannot be decrypted using that key');
      return lib.HEAPU8.slice(OUT, OUT + ciphertext.length - 16);
    },
  });
}

/** What seals and opens DATA records: libsodium's where it loaded, else @noble/ciphers'
 * (both audited; the same bytes: the section 4 vectors run through each). */
export const RECORD_AEAD = SODIUM_AEAD ?? NOBLE_AEAD;

export const RecordKind = Object.freeze({ HS_INIT: 1, HS_RESP: 2, HS_FINAL: 3, DATA: 16 });
export const HEADER_SIZE = 12;
export const MAX_RECORD_PLAINTEXT = 16384;
export const TAG_SIZE = 16;
export const MAX_HANDSHAKE_BODY = 4096;
/** The largest record: a DATA record of 16384 plaintext bytes (section 13: a WebSocket
 * message above it is refused). */
export const MAX_RECORD = HEADER_SIZE + MAX_RECORD_PLAINTEXT + TAG_SIZE;
const LAST_COUNTER = (1n << 64n) - 1n; // reserved, never used (section 4.1)

export function encodeHeader(kind, bodyLength, counter) {
  return concat(Uint8Array.of(kind, 0), u16le(bodyLength), u64le(counter));
}

function headerError(detail, message) {
  return new ProtocolError(detail, message, CloseCode.FRAME_ENCODING_ERROR);
}

/** Parses and checks a header in the order of section 2: kind, flags, body length.
 * Returns {kind, flags, bodyLength, counter (BigInt)}. */
export function parseHeader(bytes) {
  if (bytes.length < HEADER_SIZE) throw headerError('RECORD_SIZE', 'shorter than a header');
  const kind = bytes[0];
  if (kind !== RecordKind.DATA && (kind < 1 || kind > 3)) throw headerError('RECORD_KIND', `kind ${kind}`);
  if (bytes[1] !== 0) throw headerError('RECORD_FLAGS', `flags ${bytes[1]}`);
  const bodyLength = readU16le(bytes, 2);
  const ok = kind === RecordKind.DATA
    ? bodyLength >= TAG_SIZE && bodyLength <= MAX_RECORD_PLAINTEXT + TAG_SIZE
    : bodyLength >= 1 && bodyLength <= MAX_HANDSHAKE_BODY;
  if (!ok) throw headerError('RECORD_SIZE', `body length ${bodyLength} for kind ${kind}`);
  return { kind, flags: 0, bodyLength, counter: readU64le(bytes, 4) };
}

/** A handshake record: counter 0, flags 0 (section 8.1). */
export function handshakeRecord(kind, body) {
  if (body.length < 1 || body.length > MAX_HANDSHAKE_BODY) {
    throw new ProtocolError('RECORD_SIZE', `handshake body of ${body.length} bytes`);
  }
  return concat(encodeHeader(kind, body.length, 0), body);
}

/** The nonce of section 4.1: four zero bytes, then the counter as u64le -- the header's
 * last eight bytes, taken from there. */
function nonceOf(record) {
  // (one array for every record: the AEADs take it within the call, and an array per
  // record was one more allocation each way of a short call)
  NONCE.set(record.subarray(4, HEADER_SIZE), 4);
  return NONCE;
}
const NONCE = new Uint8Array(12);

/** Seals one DATA record (section 4.1): the header and the ciphertext are written into
 * the one buffer the record is (no copy of the ciphertext into a second one). */
export function sealRecord(key, counter, plaintext, aead = RECORD_AEAD) {
  // (a Number counter, every connection's short of 2^53 records, is written without a
  // BigInt or a DataView: RecordProtection's)
  const small = typeof counter === 'number' && Number.isSafeInteger(counter) && counter >= 0;
  const n = small ? 0n : BigInt(counter);
  if (!small && (n < 0n || n >= LAST_COUNTER)) throw new ProtocolError('COUNTER', `counter ${counter}`);
  if (plaintext.length > MAX_RECORD_PLAINTEXT) {
    throw new ProtocolError('RECORD_SIZE', `${plaintext.length} plaintext bytes`);
  }
  const bodyLength = plaintext.length + TAG_SIZE;
  // (a short record is a piece of a shared buffer, bytes.js: its own buffer cost more
  // than the rest of sealing it in Chromium)
  const record = newBytes(HEADER_SIZE + bodyLength);
  record[0] = RecordKind.DATA; // (flags, record[1], stay 0)
  record[2] = bodyLength & 0xff;
  record[3] = bodyLength >>> 8;
  if (small) {
    const lo = counter >>> 0;
    const hi = (counter - lo) / 4294967296;
    record[4] = lo & 0xff;
    record[5] = (lo >>> 8) & 0xff;
    record[6] = (lo >>> 16) & 0xff;
    record[7] = lo >>> 24;
    record[8] = hi & 0xff;
    record[9] = (hi >>> 8) & 0xff;
    record[10] = (hi >>> 16) & 0xff;
    record[11] = hi >>> 24;
  } else {
    new DataView(record.buffer, record.byteOffset, HEADER_SIZE).setBigUint64(4, n, true);
  }
  if (aead.sealRecordInto) aead.sealRecordInto(key, record, plaintext);
  else aead.sealInto(key, nonceOf(record), record.subarray(0, HEADER_SIZE), plaintext, record.subarray(HEADER_SIZE));
  return record;
}

/** Opens one whole DATA record (header already parsed): its plaintext, or DecryptionError. */
export function openRecord(key, record, header = parseHeader(record), aead = RECORD_AEAD) {
  if (header.counter === LAST_COUNTER) throw new DecryptionError();
  try {
    if (aead.openRecord) return aead.openRecord(key, record, header.bodyLength);
    return aead.open(key, nonceOf(record), record.subarray(0, HEADER_SIZE),
      record.subarray(HEADER_SIZE, HEADER_SIZE + header.bodyLength));
  } catch {
    throw new DecryptionError();
  }
}

/** One direction's keys over an in-order carrier (sections 4.3, 8.3): the sender numbers
 * records 0, 1, 2, ...; the receiver takes exactly the next counter and nothing else. */
export class RecordProtection {
  constructor(sendKey, receiveKey) {
    this.sendKey = sendKey;
    this.receiveKey = receiveKey;
    this.sendCounter = 0; // (a Number: 2^53 records is beyond any connection's life)
    this.receiveNext = 0n;
  }

  seal(plaintext) {
    const record = sealRecord(this.sendKey, this.sendCounter, plaintext);
    this.sendCounter += 1;
    return record;
  }

  /** The plaintext of the next DATA record; a counter out of order is REPLAY_DETECTED,
   * checked before decrypting (section 4.2, step 7). */
  open(record, header) {
    if (header.counter === LAST_COUNTER) throw new DecryptionError();
    if (header.counter !== this.receiveNext) {
      throw new ProtocolError('REPLAY', `record counter ${header.counter}, expected ${this.receiveNext}`,
        CloseCode.REPLAY_DETECTED);
    }
    const plaintext = openRecord(this.receiveKey, record, header);
    this.receiveNext += 1n;
    return plaintext;
  }
}
