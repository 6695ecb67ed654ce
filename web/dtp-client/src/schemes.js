// Sui signatures of every scheme, checked as docs/protocol.md section 8.4 says (the
// Python server's dtp/identity/_schemes.py holds the same rules): Ed25519 (flag 0x00),
// Secp256k1 (0x01) and Secp256r1 (0x02) -- ECDSA over SHA-256 of the digest, r || s with
// a low s, a compressed key --, passkey (0x06: a WebAuthn assertion whose challenge is the
// digest), multisig (0x03: Sui's MultiSigPublicKey rules, as many signatures as the
// bitmap has bits) and zkLogin (0x05: all but its Groth16 proof, which only a Sui node
// checks: the result's `nodeCheck` says so).

import { ed25519 } from '@noble/curves/ed25519.js';
import { p256 } from '@noble/curves/nist.js';
import { secp256k1 } from '@noble/curves/secp256k1.js';
import { blake2b } from '@noble/hashes/blake2.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { concat, equal, hex, u16le } from './bytes.js';

export const Flag = Object.freeze({ ED25519: 0x00, SECP256K1: 0x01, SECP256R1: 0x02, MULTISIG: 0x03, ZKLOGIN: 0x05, PASSKEY: 0x06 });
export const SCHEMES = Object.freeze({ 0: 'ed25519', 1: 'secp256k1', 2: 'secp256r1', 3: 'multisig', 5: 'zklogin', 6: 'passkey' });
export const MAX_MULTISIG_MEMBERS = 10;

const CURVES = { 1: secp256k1, 2: p256 };
const SIMPLE_SIZES = { 0: 97, 1: 98, 2: 98 };
// a multisig member's kind (BCS enum tag of PublicKey and CompressedSignature) -> its flag
const MEMBER_FLAGS = [0x00, 0x01, 0x02, 0x05, 0x06];
const MEMBER_KEY_SIZES = [32, 33, 33, null, 33];
const MEMBER_SIG_SIZES = [64, 64, 64, null, null];
const BASE64URL = /^[A-Za-z0-9_-]*$/;
const B64_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** A signature refused, and why. */
export class InvalidSignature extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidSignature';
  }
}

function refuse(message) {
  return new InvalidSignature(message);
}

/** The Sui address of a key of the scheme `flag`: 0x || hex(BLAKE2b-256(flag || key)). */
export function addressOfKey(flag, key) {
  return `0x${hex(blake2b(concat(Uint8Array.of(flag), key), { dkLen: 32 }))}`;
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.at = 0;
  }

  take(n) {
    if (this.at + n > this.bytes.length) throw refuse('a value runs past the end of its bytes');
    const out = this.bytes.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  uleb() {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      if (shift >= 35) throw refuse('a ULEB128 length longer than 5 bytes');
      const byte = this.take(1)[0];
      value += (byte & 0x7f) * 2 ** shift;
      if (!(byte & 0x80)) {
        if (byte === 0 && shift > 0) throw refuse('a ULEB128 length in a longer form than needed');
        break;
      }
    }
    if (value > 0xffffffff) throw refuse('a ULEB128 length above u32');
    return value;
  }

  uint(size) {
    let v = 0n;
    const bytes = this.take(size);
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
    return v;
  }

  vector() {
    return this.take(this.uleb());
  }

  string() {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(this.vector());
    } catch (err) {
      if (err instanceof InvalidSignature) throw err;
      throw refuse('a string that is not UTF-8');
    }
  }

  done(what) {
    if (this.at !== this.bytes.length) throw refuse(`a malformed ${what}: ${this.bytes.length - this.at} bytes after it`);
  }
}

function smallOrder(bytes) {
  try {
    return ed25519.Point.fromBytes(bytes, true).isSmallOrder();
  } catch {
    return false; // not a point at all: the signature check refuses it
  }
}

function verifyEd25519(key, signature, digest) {
  if (smallOrder(key)) throw refuse('the signing key is of small order (it proves no one)');
  if (smallOrder(signature.subarray(0, 32))) throw refuse('an Ed25519 signature whose R is of small order');
  let ok = false;
  try {
    ok = ed25519.verify(signature, digest, key, { zip215: false });
  } catch {
    ok = false;
  }
  if (!ok) throw refuse('Sui signature does not verify'); // (the words of version 1)
}

function verifyEcdsa(flag, key, signature, message) {
  const name = SCHEMES[flag];
  const curve = CURVES[flag];
  const n = curve.Point.Fn.ORDER;
  let r = 0n;
  let s = 0n;
  for (let i = 0; i < 32; i++) r = (r << 8n) | BigInt(signature[i]);
  for (let i = 32; i < 64; i++) s = (s << 8n) | BigInt(signature[i]);
  if (r <= 0n || r >= n || s <= 0n || s >= n) throw refuse(`a ${name} signature whose r or s is out of range`);
  if (s > n >> 1n) throw refuse(`a ${name} signature with a high s (Sui takes only low-s ones)`);
  if (key.length !== 33 || (key[0] !== 2 && key[0] !== 3)) throw refuse(`a ${name} public key is a 33-byte compressed point`);
  try {
    curve.Point.fromBytes(key);
  } catch {
    throw refuse(`the ${name} public key is not a point of the curve`);
  }
  let ok = false;
  try {
    ok = curve.verify(signature, message, key, { prehash: true, lowS: true, format: 'compact' });
  } catch {
    ok = false;
  }
  if (!ok) throw refuse(`the ${name} signature does not verify`);
}

function checkSimple(signature, digest, what = 'signature') {
  const flag = signature[0];
  const size = SIMPLE_SIZES[flag];
  if (size === undefined) throw refuse(`a ${what} of scheme flag ${flag}, not a simple one`);
  if (signature.length !== size) throw refuse(`a ${SCHEMES[flag]} ${what} is ${size} bytes, got ${signature.length}`);
  const raw = signature.subarray(1, 65);
  const key = signature.subarray(65);
  if (flag === Flag.ED25519) verifyEd25519(key, raw, digest);
  else verifyEcdsa(flag, key, raw, digest);
  return { address: addressOfKey(flag, key), scheme: SCHEMES[flag], publicKey: key, nodeCheck: null };
}

/** JSON.parse of `text`, refusing what Sui's parser refuses and JSON.parse takes: an
 * object with a key twice (JSON.parse keeps the last). */
function parseJson(text, what) {
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    throw refuse(`${what} is not JSON`);
  }
  // (valid JSON by now: a scan of its strings and brackets finds each object's keys)
  const stack = [];
  const token = /"(?:[^"\\]|\\.)*"|[{}[\]:,]/g;
  let previous = null;
  for (const [t] of text.matchAll(token)) {
    if (t === '{') stack.push(new Set());
    else if (t === '[') stack.push(null);
    else if (t === '}' || t === ']') stack.pop();
    else if (t === ':') {
      const keys = stack[stack.length - 1];
      const key = JSON.parse(previous);
      if (keys.has(key)) throw refuse(`${what}: a JSON object with the key ${JSON.stringify(key)} twice`);
      keys.add(key);
    }
    previous = t;
  }
  return value;
}

function base64urlUnpadded(text) {
  if (!BASE64URL.test(text) || text.length % 4 === 1) throw refuse('a WebAuthn challenge that is not unpadded base64url');
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text) {
    value = (value << 6) | B64_ALPHABET.indexOf(c);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >> bits) & 0xff);
    }
  }
  if (value & ((1 << bits) - 1)) throw refuse('a WebAuthn challenge that is not unpadded base64url');
  return Uint8Array.from(out);
}

function checkPasskey(signature, digest) {
  const r = new Reader(signature.subarray(1));
  const authenticatorData = r.vector();
  const clientDataBytes = r.vector();
  const userSignature = r.vector();
  r.done('passkey signature');
  let clientData;
  try {
    clientData = new TextDecoder('utf-8', { fatal: true }).decode(clientDataBytes);
  } catch {
    throw refuse('a passkey\'s client data is not UTF-8');
  }
  if (userSignature.length !== 98 || userSignature[0] !== Flag.SECP256R1) {
    throw refuse('a passkey\'s signature is a 98-byte Secp256r1 signature');
  }
  const collected = parseJson(clientData, 'a passkey\'s client data');
  if (!collected || typeof collected !== 'object' || Array.isArray(collected)) throw refuse('a passkey\'s client data is not a JSON object');
  if (collected.type !== 'webauthn.get') throw refuse('a passkey\'s client data is not of type webauthn.get');
  if (typeof collected.challenge !== 'string' || typeof collected.origin !== 'string') {
    throw refuse('a passkey\'s client data without its challenge or origin');
  }
  if (!equal(base64urlUnpadded(collected.challenge), digest)) throw refuse('a passkey\'s challenge is not the signed digest');
  const key = userSignature.subarray(65);
  verifyEcdsa(Flag.SECP256R1, key, userSignature.subarray(1, 65), concat(authenticatorData, sha256(clientDataBytes)));
  return { address: addressOfKey(Flag.PASSKEY, key), scheme: 'passkey', publicKey: key, nodeCheck: null };
}

/** The iss a zkLogin proof's iss_base64_details reveals (Sui's reading of it). */
export function issOfClaim(value, indexMod4) {
  if (value.length < 2 || !BASE64URL.test(value)) throw refuse('a zkLogin issuer claim that is not base64url');
  if (indexMod4 > 2) throw refuse('a zkLogin issuer claim at an impossible offset');
  let bits = '';
  for (const c of value) bits += B64_ALPHABET.indexOf(c).toString(2).padStart(6, '0');
  bits = bits.slice(2 * indexMod4);
  const last = (indexMod4 + value.length - 1) % 4;
  if (last === 0) throw refuse('a zkLogin issuer claim at an impossible offset');
  bits = bits.slice(0, bits.length - 2 * (3 - last));
  if (bits.length % 8) throw refuse('a zkLogin issuer claim that is not whole bytes');
  const bytes = new Uint8Array(bits.length / 8);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(bits.slice(8 * i, 8 * i + 8), 2);
  let claim;
  try {
    claim = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw refuse('a zkLogin issuer claim that is not UTF-8');
  }
  if (!claim.endsWith('}') && !claim.endsWith(',')) throw refuse('a zkLogin issuer claim that does not end a JSON member');
  const text = `{${claim.slice(0, -1)}}`;
  const member = parseJson(text, 'a zkLogin issuer claim');
  if (!member || typeof member.iss !== 'string' || Object.keys(member).length !== 1) throw refuse('a zkLogin issuer claim that is not "iss"');
  if (new TextEncoder().encode(member.iss).length > 255) throw refuse('a zkLogin issuer longer than 255 bytes');
  return member.iss;
}

function decimal(text, what) {
  if (!/^(0|[1-9][0-9]*)$/.test(text) || text.length > 78) throw refuse(`a zkLogin ${what} that is not a canonical decimal number`);
  const v = BigInt(text);
  if (v >> 256n) throw refuse(`a zkLogin ${what} above 256 bits`);
  return v;
}

function seedBytes(seed) {
  const out = new Uint8Array(32);
  let v = seed;
  for (let i = 31; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** A zkLogin public identifier: len(iss) || iss || address seed (32 bytes, big-endian). */
export function zkLoginIdentifier(iss, addressSeed) {
  const raw = new TextEncoder().encode(iss);
  return concat(Uint8Array.of(raw.length), raw, seedBytes(BigInt(addressSeed)));
}

function zkLoginParts(signature, digest) {
  const r = new Reader(signature.subarray(1));
  const points = (n) => {
    for (let i = 0; i < n; i++) decimal(r.string(), 'proof point');
  };
  points(r.uleb());
  for (let i = 0, n = r.uleb(); i < n; i++) points(r.uleb());
  points(r.uleb());
  const claim = r.string();
  const indexMod4 = Number(r.uint(1));
  r.string(); // the JWT header: the node checks it with the proof
  const seed = decimal(r.string(), 'address seed');
  const maxEpoch = r.uint(8);
  const userSignature = r.vector();
  r.done('zkLogin signature');
  if (userSignature.length === 0) throw refuse('a zkLogin signature without its ephemeral key\'s signature');
  checkSimple(userSignature, digest, 'zkLogin ephemeral signature');
  return { identifier: zkLoginIdentifier(issOfClaim(claim, indexMod4), seed), maxEpoch };
}

/** A multisig's address: BLAKE2b-256(0x03 || threshold u16le || each flag || key || weight). */
export function multisigAddress(members, threshold) {
  const parts = [Uint8Array.of(Flag.MULTISIG), u16le(threshold)];
  for (const { flag, key, weight } of members) parts.push(Uint8Array.of(flag), key, Uint8Array.of(weight));
  return `0x${hex(blake2b(concat(...parts), { dkLen: 32 }))}`;
}

function memberOf(r, sizes, what) {
  const tag = r.uleb();
  if (tag >= MEMBER_FLAGS.length) throw refuse(`a multisig ${what} of unknown kind ${tag}`);
  const size = sizes[tag];
  return { tag, bytes: size === null ? r.vector() : r.take(size) };
}

function checkMember(tag, key, signature, digest) {
  const flag = MEMBER_FLAGS[tag];
  if (flag <= Flag.SECP256R1) {
    checkSimple(concat(Uint8Array.of(flag), signature, key), digest, 'multisig member\'s signature');
    return null;
  }
  if (signature.length === 0 || signature[0] !== flag) throw refuse(`a multisig ${SCHEMES[flag]} member's signature without its flag`);
  if (flag === Flag.PASSKEY) {
    if (!equal(checkPasskey(signature, digest).publicKey, key)) throw refuse('a multisig passkey member signed with another key');
    return null;
  }
  const { identifier, maxEpoch } = zkLoginParts(signature, digest);
  if (!equal(identifier, key)) throw refuse('a multisig zkLogin member\'s proof is for another identifier');
  return maxEpoch;
}

function checkMultisig(signature, digest) {
  const r = new Reader(signature.subarray(1));
  const sigs = [];
  for (let i = 0, n = r.uleb(); i < n; i++) sigs.push(memberOf(r, MEMBER_SIG_SIZES, 'signature'));
  const bitmap = Number(r.uint(2));
  const keyStart = r.at;
  const members = [];
  for (let i = 0, n = r.uleb(); i < n; i++) {
    const { tag, bytes } = memberOf(r, MEMBER_KEY_SIZES, 'member');
    members.push({ tag, key: bytes, weight: Number(r.uint(1)) });
  }
  const threshold = Number(r.uint(2));
  r.done('multisig signature');
  if (members.length < 1 || members.length > MAX_MULTISIG_MEMBERS) throw refuse(`a multisig of ${members.length} members (1 to 10)`);
  if (threshold === 0 || members.some((m) => m.weight === 0)) throw refuse('a multisig whose threshold or a member\'s weight is 0');
  if (members.reduce((sum, m) => sum + m.weight, 0) < threshold) throw refuse('a multisig whose members\' weights cannot reach its threshold');
  const seen = new Set(members.map((m) => `${m.tag}:${hex(m.key)}`));
  if (seen.size !== members.length) throw refuse('a multisig with a member twice');
  if (bitmap >> members.length) throw refuse('a multisig bitmap naming a member it does not have');
  const signers = members.map((_, i) => i).filter((i) => (bitmap >> i) & 1);
  if (sigs.length === 0 || sigs.length !== signers.length) {
    throw refuse(`a multisig of ${sigs.length} signatures whose bitmap names ${signers.length}`);
  }
  let weight = 0;
  const maxEpochs = [];
  signers.forEach((index, i) => {
    const member = members[index];
    if (sigs[i].tag !== member.tag) throw refuse('a multisig signature of another kind than its member');
    const maxEpoch = checkMember(member.tag, member.key, sigs[i].bytes, digest);
    if (maxEpoch !== null) maxEpochs.push(maxEpoch);
    weight += member.weight;
  });
  if (weight < threshold) throw refuse(`a multisig signed with weight ${weight}, under its threshold ${threshold}`);
  const address = multisigAddress(members.map((m) => ({ flag: MEMBER_FLAGS[m.tag], key: m.key, weight: m.weight })), threshold);
  return {
    address,
    scheme: 'multisig',
    publicKey: signature.slice(1 + keyStart),
    nodeCheck: maxEpochs.length ? { signature, address, maxEpochs } : null,
  };
}

/**
 * Checks a serialized Sui signature of any scheme over a 32-byte intent `digest`; resolves
 * to `{address, scheme, publicKey, nodeCheck}`, `nodeCheck` null unless a Sui node must
 * still verify its zkLogin parts. Throws InvalidSignature saying which rule failed.
 */
export function checkSignature(signature, digest) {
  if (signature.length === 0) throw refuse('an empty Sui signature');
  const flag = signature[0];
  if (flag in SIMPLE_SIZES) return checkSimple(signature, digest);
  if (flag === Flag.PASSKEY) return checkPasskey(signature, digest);
  if (flag === Flag.MULTISIG) return checkMultisig(signature, digest);
  if (flag === Flag.ZKLOGIN) {
    const { identifier, maxEpoch } = zkLoginParts(signature, digest);
    const address = addressOfKey(Flag.ZKLOGIN, identifier);
    return { address, scheme: 'zklogin', publicKey: identifier, nodeCheck: { signature, address, maxEpochs: [maxEpoch] } };
  }
  throw refuse(`unsupported Sui signature scheme flag ${flag}`);
}
