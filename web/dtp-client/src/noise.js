// The Noise handshake of docs/protocol.md section 8 (Noise spec revision 34), both sides
// (the client is the initiator, a server the responder): Noise_IK_25519_ChaChaPoly_BLAKE2s when the server's static key is known, else
// Noise_XX_25519_ChaChaPoly_BLAKE2s; prologue "DTP/1".

import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { blake2s } from '@noble/hashes/blake2.js';
import { hmac } from '@noble/hashes/hmac.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { concat, u16le, u64le, utf8 } from './bytes.js';
import { HandshakeError } from './errors.js';

export const PROLOGUE = utf8('DTP/1');
export const PROTOCOL_IK = 'Noise_IK_25519_ChaChaPoly_BLAKE2s';
export const PROTOCOL_XX = 'Noise_XX_25519_ChaChaPoly_BLAKE2s';
export const PATTERN_BYTE = Object.freeze({ IK: 1, XX: 2 });
const HASHLEN = 32;
const DHLEN = 32;
const TAGLEN = 16;
const EMPTY = new Uint8Array(0);

function hash(data) {
  return blake2s(data);
}

function hkdf(chainingKey, ikm) {
  const temp = hmac(blake2s, chainingKey, ikm);
  const out1 = hmac(blake2s, temp, Uint8Array.of(1));
  const out2 = hmac(blake2s, temp, concat(out1, Uint8Array.of(2)));
  return [out1, out2];
}

function dh(privateKey, publicKey) {
  try {
    return x25519.getSharedSecret(privateKey, publicKey);
  } catch {
    throw new HandshakeError('X25519 with a key of small order');
  }
}

/** A fresh X25519 key pair, or the one for a given private key. */
export function keyPair(privateKey = randomBytes(32)) {
  return { privateKey, publicKey: x25519.getPublicKey(privateKey) };
}

/** The IK binding of section 8.4: what the client signs in IK, fixed by message 1's keys. */
export function ikBinding(serverStatic, clientEphemeral, prologue = PROLOGUE) {
  return blake2s(concat(utf8(PROTOCOL_IK), u16le(prologue.length), prologue, serverStatic, clientEphemeral));
}

class SymmetricState {
  constructor(protocolName) {
    const name = utf8(protocolName);
    this.h = name.length <= HASHLEN ? concat(name, new Uint8Array(HASHLEN - name.length)) : hash(name);
    this.ck = this.h;
    this.k = null;
    this.n = 0n;
  }

  mixHash(data) {
    this.h = hash(concat(this.h, data));
  }

  mixKey(ikm) {
    const [ck, k] = hkdf(this.ck, ikm);
    this.ck = ck;
    this.k = k;
    this.n = 0n;
  }

  nonce() {
    const nonce = concat(new Uint8Array(4), u64le(this.n));
    this.n += 1n;
    return nonce;
  }

  encryptAndHash(plaintext) {
    const out = this.k === null ? plaintext : chacha20poly1305(this.k, this.nonce(), this.h).encrypt(plaintext);
    this.mixHash(out);
    return out;
  }

  decryptAndHash(ciphertext) {
    let out = ciphertext;
    if (this.k !== null) {
      try {
        out = chacha20poly1305(this.k, this.nonce(), this.h).decrypt(ciphertext);
      } catch {
        throw new HandshakeError('a handshake message failed authentication');
      }
    }
    this.mixHash(ciphertext);
    return out;
  }

  split() {
    return hkdf(this.ck, EMPTY);
  }
}

/**
 * The initiator's handshake state. `pattern` is "IK" (needs `remoteStatic`) or "XX";
 * `staticKey` / `ephemeralKey` are key pairs (random when absent; fixed only to replay
 * the section 12 transcripts).
 */
export class Initiator {
  constructor({ pattern, staticKey = keyPair(), ephemeralKey = keyPair(), remoteStatic = null, prologue = PROLOGUE }) {
    if (pattern !== 'IK' && pattern !== 'XX') throw new TypeError(`unknown pattern ${pattern}`);
    if (pattern === 'IK' && (!remoteStatic || remoteStatic.length !== DHLEN)) {
      throw new TypeError('IK needs the server\'s 32-byte static key');
    }
    this.pattern = pattern;
    this.s = staticKey;
    this.e = ephemeralKey;
    this.rs = remoteStatic;
    this.re = null;
    this.sym = new SymmetricState(pattern === 'IK' ? PROTOCOL_IK : PROTOCOL_XX);
    this.sym.mixHash(prologue);
    if (pattern === 'IK') this.sym.mixHash(remoteStatic); // pre-message: <- s
    this.step = 1;
  }

  /** Message 1: IK `e, es, s, ss` + payload; XX `e` + payload. */
  writeMessage1(payload) {
    if (this.step !== 1) throw new Error('message 1 was written');
    this.step = 2;
    const parts = [this.e.publicKey];
    this.sym.mixHash(this.e.publicKey);
    if (this.pattern === 'IK') {
      this.sym.mixKey(dh(this.e.privateKey, this.rs));
      parts.push(this.sym.encryptAndHash(this.s.publicKey));
      this.sym.mixKey(dh(this.s.privateKey, this.rs));
    }
    parts.push(this.sym.encryptAndHash(payload));
    return concat(...parts);
  }

  /** Reads message 2 (IK `e, ee, se`; XX `e, ee, s, es`) and returns its payload. */
  readMessage2(message) {
    if (this.step !== 2) throw new Error('message 2 out of turn');
    const fixed = this.pattern === 'IK' ? DHLEN + TAGLEN : DHLEN + DHLEN + TAGLEN + TAGLEN;
    if (message.length < fixed) throw new HandshakeError('message 2 is too short');
    this.re = message.slice(0, DHLEN);
    this.sym.mixHash(this.re);
    this.sym.mixKey(dh(this.e.privateKey, this.re));
    let at = DHLEN;
    if (this.pattern === 'IK') {
      this.sym.mixKey(dh(this.s.privateKey, this.re));
    } else {
      this.rs = this.sym.decryptAndHash(message.slice(at, at + DHLEN + TAGLEN));
      at += DHLEN + TAGLEN;
      this.sym.mixKey(dh(this.e.privateKey, this.rs));
    }
    const payload = this.sym.decryptAndHash(message.slice(at));
    this.step = this.pattern === 'IK' ? 0 : 3;
    return payload;
  }

  /** XX message 3: `s, se` + payload. */
  writeMessage3(payload = EMPTY) {
    if (this.step !== 3) throw new Error('message 3 out of turn');
    const encryptedStatic = this.sym.encryptAndHash(this.s.publicKey);
    this.sym.mixKey(dh(this.s.privateKey, this.re));
    const out = concat(encryptedStatic, this.sym.encryptAndHash(payload));
    this.step = 0;
    return out;
  }

  get complete() {
    return this.step === 0;
  }

  /** The handshake hash (section 8.3). */
  get handshakeHash() {
    return this.sym.h;
  }

  /** [client -> server key, server -> client key] (section 8.3). */
  split() {
    if (!this.complete) throw new Error('the handshake is not complete');
    return this.sym.split();
  }

  get remoteStatic() {
    return this.rs;
  }
}

/**
 * The responder's handshake state (a server's side). The pattern comes from message 1's
 * pattern byte (section 8.1), so `pattern` is given once that byte is read; `staticKey`
 * is the server's X25519 key pair (IK's `<- s` pre-message), `ephemeralKey` random
 * unless a transcript fixes it.
 */
export class Responder {
  constructor({ pattern, staticKey, ephemeralKey = keyPair(), prologue = PROLOGUE }) {
    if (pattern !== 'IK' && pattern !== 'XX') throw new TypeError(`unknown pattern ${pattern}`);
    if (!staticKey || staticKey.publicKey?.length !== DHLEN) throw new TypeError('a responder needs its X25519 static key pair');
    this.pattern = pattern;
    this.s = staticKey;
    this.e = ephemeralKey;
    this.rs = null;
    this.re = null;
    this.sym = new SymmetricState(pattern === 'IK' ? PROTOCOL_IK : PROTOCOL_XX);
    this.sym.mixHash(prologue);
    if (pattern === 'IK') this.sym.mixHash(staticKey.publicKey); // pre-message: <- s
    this.step = 1;
  }

  /** Reads message 1 (IK `e, es, s, ss`; XX `e`) and returns its payload. */
  readMessage1(message) {
    if (this.step !== 1) throw new Error('message 1 out of turn');
    const fixed = this.pattern === 'IK' ? DHLEN + DHLEN + TAGLEN + TAGLEN : DHLEN;
    if (message.length < fixed) throw new HandshakeError('message 1 is too short');
    this.re = message.slice(0, DHLEN);
    this.sym.mixHash(this.re);
    let at = DHLEN;
    if (this.pattern === 'IK') {
      this.sym.mixKey(dh(this.s.privateKey, this.re));
      this.rs = this.sym.decryptAndHash(message.slice(at, at + DHLEN + TAGLEN));
      at += DHLEN + TAGLEN;
      this.sym.mixKey(dh(this.s.privateKey, this.rs));
    }
    const payload = this.sym.decryptAndHash(message.slice(at));
    this.step = 2;
    return payload;
  }

  /** Message 2: IK `e, ee, se` + payload; XX `e, ee, s, es` + payload. */
  writeMessage2(payload) {
    if (this.step !== 2) throw new Error('message 2 out of turn');
    const parts = [this.e.publicKey];
    this.sym.mixHash(this.e.publicKey);
    this.sym.mixKey(dh(this.e.privateKey, this.re));
    if (this.pattern === 'IK') {
      this.sym.mixKey(dh(this.e.privateKey, this.rs));
    } else {
      parts.push(this.sym.encryptAndHash(this.s.publicKey));
      this.sym.mixKey(dh(this.s.privateKey, this.re));
    }
    parts.push(this.sym.encryptAndHash(payload));
    this.step = this.pattern === 'IK' ? 0 : 3;
    return concat(...parts);
  }

  /** Reads XX message 3 (`s, se`) and returns its payload. */
  readMessage3(message) {
    if (this.step !== 3) throw new Error('message 3 out of turn');
    if (message.length < DHLEN + TAGLEN + TAGLEN) throw new HandshakeError('message 3 is too short');
    this.rs = this.sym.decryptAndHash(message.slice(0, DHLEN + TAGLEN));
    this.sym.mixKey(dh(this.e.privateKey, this.rs));
    const payload = this.sym.decryptAndHash(message.slice(DHLEN + TAGLEN));
    this.step = 0;
    return payload;
  }

  get complete() {
    return this.step === 0;
  }

  get handshakeHash() {
    return this.sym.h;
  }

  /** [client -> server key, server -> client key] (section 8.3): a server receives with
   * the first and sends with the second. */
  split() {
    if (!this.complete) throw new Error('the handshake is not complete');
    return this.sym.split();
  }

  /** The client's static key (IK: from message 1; XX: from message 3). */
  get remoteStatic() {
    return this.rs;
  }
}

/** Bytes Noise adds to each message (section 8.1), for the payload bound. */
export const NOISE_OVERHEAD = Object.freeze({ IK: [96, 48], XX: [32, 96, 64] });
