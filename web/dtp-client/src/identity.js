// The client's identity proof (docs/protocol.md section 8.4): a Sui personal-message
// signature over a 32-byte value only this handshake has, by a wallet of any Sui scheme.
// A signer is any object {address, signPersonalMessage(message)}: a Sui wallet (wallet
// standard's `sui:signPersonalMessage`, see walletSigner), one of Mysten's SDK keypairs
// or signers (keypairSigner) or, in tests, a local Ed25519 key (ed25519Signer).
// signPersonalMessage resolves to the serialized Sui signature -- flag || signature || key
// for Ed25519 (97 bytes), Secp256k1 and Secp256r1 (98), or a passkey's, multisig's or
// zkLogin's own layout -- as bytes, as base64, or as {signature}.

import { ed25519 } from '@noble/curves/ed25519.js';
import { blake2b } from '@noble/hashes/blake2.js';
import { asBytes, base64Decode, concat, hex, utf8 } from './bytes.js';
import { HandshakeError } from './errors.js';
import { InvalidSignature, SCHEMES, checkSignature } from './schemes.js';

export const CONTEXT_IK = utf8('DTP-AUTH-IK-V1');
export const CONTEXT_XX = utf8('DTP-AUTH-V1');
/** The size of an Ed25519 proof, the only kind transport version 1 takes. */
export const PROOF_SIZE = 97;
/** The largest proof of any scheme (transport version 2): what IK's first message has
 * room for beside the other transport parameters (section 8.4). */
export const MAX_PROOF_SIZE = 3840;
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
    scheme: 'ED25519',
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
 * Any Sui account makes a proof DTP accepts (section 8.4): Ed25519, Secp256k1,
 * Secp256r1, passkey, multisig, and zkLogin where the server has a Sui node to ask.
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

/**
 * A signer from one of Mysten's SDK signers (@mysten/sui): an Ed25519Keypair,
 * Secp256k1Keypair, Secp256r1Keypair, PasskeyKeypair, a MultiSigSigner or a
 * ZkLoginSigner -- anything with `toSuiAddress()` and `signPersonalMessage(bytes)`.
 * This package does not import the SDK: the keypair is the caller's.
 */
export function keypairSigner(keypair) {
  return {
    address: keypair.toSuiAddress(),
    scheme: keypair.getKeyScheme?.(),
    async signPersonalMessage(message) {
      return (await keypair.signPersonalMessage(message)).signature;
    },
  };
}

/** The proof a signer gave, as bytes (from bytes, base64 or {signature}). */
function proofBytes(signature) {
  if (signature && typeof signature === 'object' && 'signature' in signature) signature = signature.signature;
  return typeof signature === 'string' ? base64Decode(signature) : asBytes(signature);
}

/** Whether `proof` is the Ed25519 form, the only one transport version 1 takes. */
export function isEd25519Proof(proof) {
  return proof.length === PROOF_SIZE && proof[0] === ED25519_FLAG;
}

/** Asks the signer for the proof and checks its shape: a known scheme's flag, at most
 * MAX_PROOF_SIZE bytes (the server checks the rest). */
export async function makeProof(signer, message) {
  const proof = proofBytes(await signer.signPersonalMessage(message));
  if (proof.length === 0 || !(proof[0] in SCHEMES)) {
    throw new HandshakeError(`the signer gave ${proof.length} bytes with flag ${proof[0]}: not a Sui signature`);
  }
  if (proof[0] === ED25519_FLAG && proof.length !== PROOF_SIZE) {
    throw new HandshakeError(`the signer gave an Ed25519 signature of ${proof.length} bytes, not ${PROOF_SIZE}`);
  }
  if (proof.length > MAX_PROOF_SIZE) {
    throw new HandshakeError(`the signer's ${SCHEMES[proof[0]]} proof is ${proof.length} bytes: DTP takes at most ${MAX_PROOF_SIZE}`);
  }
  return proof;
}

/**
 * A server's check of a client's proof (section 8.4), of any scheme: `{address, scheme,
 * publicKey, nodeCheck}`, where `nodeCheck` is null unless a Sui node must still verify
 * the proof's zkLogin parts (this package asks none). `version`: the transport version
 * in force (1 takes the Ed25519 form alone). Throws HandshakeError saying which check
 * failed.
 */
export function checkProofOf(proof, message, version = 2) {
  if (proof.length < 1 || proof.length > MAX_PROOF_SIZE) {
    throw new HandshakeError(`a proof of ${proof.length} bytes (1 to ${MAX_PROOF_SIZE})`);
  }
  if (version < 2 && !isEd25519Proof(proof)) {
    throw new HandshakeError(`transport version 1 takes only the ${PROOF_SIZE}-byte Ed25519 proof`);
  }
  try {
    return checkSignature(proof, personalMessageDigest(message));
  } catch (err) {
    if (err instanceof InvalidSignature) throw new HandshakeError(err.message);
    throw err;
  }
}

/** The Sui address a proof proves, for a proof wholly checked here (zkLogin is refused:
 * its proof is a Sui node's to verify). Throws HandshakeError saying why not. */
export function checkProof(proof, message, version = 2) {
  const signer = checkProofOf(proof, message, version);
  if (signer.nodeCheck) {
    throw new HandshakeError(`a ${signer.scheme} proof is verified by a Sui node, which this server does not ask`);
  }
  return signer.address;
}

/** The same check, for tests and diagnostics: the address `proof` proves over `message`. */
export function verifyProof(proof, message) {
  return checkProof(proof, message);
}
