// The client's identity proof (docs/protocol.md section 8.4): a Sui personal-message
// signature over a 32-byte value only this handshake has. A signer is any object
// {address, signPersonalMessage(message)}: a Sui wallet (wallet standard's
// `sui:signPersonalMessage`, see walletSigner) or, in tests, a local Ed25519 key
// (ed25519Signer). signPersonalMessage resolves to the serialized Sui signature:
// flag 0x00 || signature || public key (97 bytes), as bytes or as base64.

import { ed25519 } from '@noble/curves/ed25519.js';
import { blake2b } from '@noble/hashes/blake2.js';
import { asBytes, base64Decode, concat, hex, utf8 } from './bytes.js';
import { HandshakeError } from './errors.js';

export const CONTEXT_IK = utf8('DTP-AUTH-IK-V1');
export const CONTEXT_XX = utf8('DTP-AUTH-V1');
export const PROOF_SIZE = 97;
const ED25519_FLAG = 0x00;
const INTENT_PERSONAL_MESSAGE = Uint8Array.of(3, 0, 0);

function uleb128(n) {
  const out = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return Uint8Array.from(out);
}

/** What the client signs: context || bound (IK: the binding; XX: the handshake hash). */
export function proofMessage(pattern, bound) {
  return concat(pattern === 'IK' ? CONTEXT_IK : CONTEXT_XX, bound);
}

/** Sui's personal-message digest: BLAKE2b-256(intent [3, 0, 0] || BCS vector<u8>(m)). */
export function personalMessageDigest(message) {
  return blake2b(concat(INTENT_PERSONAL_MESSAGE, uleb128(message.length), message), { dkLen: 32 });
}

/** The Sui address of an Ed25519 public key: 0x || hex(BLAKE2b-256(0x00 || key)). */
export function suiAddress(publicKey) {
  return `0x${hex(blake2b(concat(Uint8Array.of(ED25519_FLAG), publicKey), { dkLen: 32 }))}`;
}

/** A signer from a 32-byte Ed25519 seed: it signs as a Sui wallet would (tests, scripts). */
export function ed25519Signer(seed) {
  const publicKey = ed25519.getPublicKey(seed);
  return {
    address: suiAddress(publicKey),
    publicKey,
    async signPersonalMessage(message) {
      const signature = ed25519.sign(personalMessageDigest(message), seed);
      return concat(Uint8Array.of(ED25519_FLAG), signature, publicKey);
    },
  };
}

/**
 * A signer from a wallet-standard Sui wallet: `feature` is the wallet's
 * `features["sui:signPersonalMessage"]` and `account` the WalletAccount to sign with.
 * Only Ed25519 accounts make a proof DTP accepts (section 8.4: flag 0x00).
 */
export function walletSigner(feature, account) {
  return {
    address: account.address,
    async signPersonalMessage(message) {
      const { signature } = await feature.signPersonalMessage({ message, account });
      return signature;
    },
  };
}

/** Asks the signer for the proof and checks its shape: 97 bytes, the Ed25519 flag. */
export async function makeProof(signer, message) {
  let signature = await signer.signPersonalMessage(message);
  if (signature && typeof signature === 'object' && 'signature' in signature) signature = signature.signature;
  const proof = typeof signature === 'string' ? base64Decode(signature) : asBytes(signature);
  if (proof.length !== PROOF_SIZE || proof[0] !== ED25519_FLAG) {
    throw new HandshakeError(
      `the signer gave ${proof.length} bytes with flag ${proof[0]}: DTP takes an Ed25519 Sui signature of ${PROOF_SIZE} bytes`,
    );
  }
  return proof;
}

/** Checks a proof's shape and signature (RFC 8032, cofactorless), returning the Sui
 * address it proves: for tests and diagnostics. A server does the full checks of
 * section 8.4 (small-order keys included); this client never verifies its own proofs. */
export function verifyProof(proof, message) {
  if (proof.length !== PROOF_SIZE || proof[0] !== ED25519_FLAG) throw new HandshakeError('malformed proof');
  const signature = proof.subarray(1, 65);
  const publicKey = proof.subarray(65);
  if (!ed25519.verify(signature, personalMessageDigest(message), publicKey, { zip215: false })) {
    throw new HandshakeError('the signature does not verify');
  }
  return suiAddress(publicKey);
}

function smallOrder(bytes) {
  // any encoding of any of the eight small-order points (section 8.4): decoded leniently
  // (ZIP-215 takes non-canonical encodings), so no encoding of one slips past
  try {
    return ed25519.Point.fromBytes(bytes, true).isSmallOrder();
  } catch {
    return false; // not a point at all: the signature check refuses it
  }
}

/** A server's check of a client's proof (section 8.4): 97 bytes, flag 0x00, neither the
 * public key nor the signature's R of small order, and the signature verifying over
 * `message` (RFC 8032, cofactorless). Returns the proven Sui address; throws
 * HandshakeError saying which check failed. */
export function checkProof(proof, message) {
  if (proof.length !== PROOF_SIZE) throw new HandshakeError(`a proof of ${proof.length} bytes, not ${PROOF_SIZE}`);
  if (proof[0] !== ED25519_FLAG) throw new HandshakeError(`signature scheme flag ${proof[0]} is not Ed25519`);
  const signature = proof.subarray(1, 65);
  const publicKey = proof.subarray(65);
  if (smallOrder(publicKey)) throw new HandshakeError('a public key of small order');
  if (smallOrder(signature.subarray(0, 32))) throw new HandshakeError('a signature whose R is of small order');
  let ok = false;
  try {
    ok = ed25519.verify(signature, personalMessageDigest(message), publicKey, { zip215: false });
  } catch {
    ok = false;
  }
  if (!ok) throw new HandshakeError('Sui signature does not verify');
  return suiAddress(publicKey);
}
