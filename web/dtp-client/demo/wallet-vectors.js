// The identity-proof vectors of docs/protocol.md section 8.4 (scripts/wallet-vectors.mjs
// prints them): each scheme's proof over section 8.4's IK message, made by Mysten's SDK
// from demo/wallets.js's keys, and proofs a verifier refuses (a high s the SDK itself
// accepts, a changed flag, another key's signature, a multisig under its threshold, with
// an extra bitmap bit, with a byte after it).

import { bcs } from '@mysten/sui/bcs';
import { Secp256k1Keypair } from '@mysten/sui/keypairs/secp256k1';
import { MultiSigPublicKey } from '@mysten/sui/multisig';
import { p256 } from '@noble/curves/nist.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { base64Decode, concat, fromHex, hex, utf8 } from '../src/bytes.js';
import { checkSignature } from '../src/schemes.js';
import { personalMessageDigest } from '../src/identity.js';
import { SECRETS, SoftwarePasskey, PASSKEY_ORIGIN, ZKLOGIN, multisigKey, sdkKeypairs, zkLoginKeypair } from './wallets.js';

/** Section 8.4's IK message: "DTP-AUTH-IK-V1" || the binding of its ik-binding vector. */
export const MESSAGE = concat(utf8('DTP-AUTH-IK-V1'), fromHex('c0187d396b61b58be66ca3cae7c9e056f8171ab219282ceff853011b93e438a8'));

async function sign(keypair) {
  return base64Decode((await keypair.signPersonalMessage(MESSAGE)).signature);
}

function vector(name, scheme, proof, extra = {}) {
  return { name: `identity-proof-${name}`, kind: 'identity-proof-scheme', scheme, message: hex(MESSAGE), digest: hex(personalMessageDigest(MESSAGE)), ...extra, proof: hex(proof) };
}

function refused(name, proof, why, extra = {}) {
  return { name: `identity-proof-refused-${name}`, kind: 'identity-proof-refused', message: hex(MESSAGE), ...extra, proof: hex(proof), why };
}

function multisigWith(proof, change) {
  const parsed = bcs.MultiSig.parse(proof.subarray(1));
  change(parsed);
  return concat(Uint8Array.of(3), bcs.MultiSig.serialize(parsed, { maxSize: 8192 }).toBytes());
}

/** Every vector, in the order the spec shows them. */
export async function walletVectors() {
  const k = sdkKeypairs();
  const out = [];
  for (const scheme of ['secp256k1', 'secp256r1']) {
    const proof = await sign(k[scheme]);
    out.push(vector(scheme, scheme, proof, { secret_key: SECRETS[scheme], public_key: hex(proof.subarray(65)), address: k[scheme].toSuiAddress() }));
  }
  const passkey = await sign(k.passkey);
  const soft = new SoftwarePasskey(SECRETS.passkey);
  out.push(vector('passkey', 'passkey', passkey, {
    secret_key: SECRETS.passkey,
    origin: PASSKEY_ORIGIN,
    public_key: hex(soft.publicKey),
    address: k.passkey.toSuiAddress(),
  }));
  const multisig = await sign(k.multisig);
  const msKey = multisigKey();
  out.push(vector('multisig', 'multisig', multisig, {
    members: [
      { scheme: 'ed25519', secret_key: SECRETS.ed25519, weight: 1 },
      { scheme: 'secp256k1', secret_key: SECRETS.secp256k1, weight: 1 },
      { scheme: 'secp256r1', secret_key: SECRETS.secp256r1, weight: 2 },
      { scheme: 'secp256k1', secret_key: SECRETS.other_secp256k1, weight: 1 },
    ],
    threshold: 3,
    signers: [1, 2],
    public_key: hex(msKey.toRawBytes()),
    address: msKey.toSuiAddress(),
  }));
  const zk = zkLoginKeypair();
  const zkProof = await sign(zk);
  const zkIdentifier = zk.getPublicKey().toRawBytes();
  out.push(vector('zklogin', 'zklogin', zkProof, {
    ephemeral_ed25519_seed: ZKLOGIN.ephemeralSecret,
    inputs: ZKLOGIN.inputs,
    max_epoch: ZKLOGIN.maxEpoch,
    iss: ZKLOGIN.jwk.iss,
    public_key: hex(zkIdentifier),
    address: zk.toSuiAddress(),
  }));
  // a multisig whose members are the zkLogin account and the Ed25519 key, threshold 1
  const zkMulti = MultiSigPublicKey.fromPublicKeys({
    threshold: 1,
    publicKeys: [
      { publicKey: zk.getPublicKey(), weight: 1 },
      { publicKey: k.ed25519.getPublicKey(), weight: 1 },
    ],
  });
  const zkMultiProof = base64Decode(zkMulti.combinePartialSignatures([(await zk.signPersonalMessage(MESSAGE)).signature]));
  out.push(vector('multisig-zklogin', 'multisig', zkMultiProof, { public_key: hex(zkMulti.toRawBytes()), address: zkMulti.toSuiAddress() }));

  // refused: a Secp256r1 signature with s replaced by n - s (ECDSA takes it; Sui does not)
  const r1 = await sign(k.secp256r1);
  const n = p256.Point.Fn.ORDER;
  let s = 0n;
  for (const b of r1.subarray(33, 65)) s = (s << 8n) | BigInt(b);
  const highS = fromHex((n - s).toString(16).padStart(64, '0'));
  const highProof = concat(r1.subarray(0, 33), highS, r1.subarray(65));
  if (!p256.verify(highProof.subarray(1, 65), sha256(personalMessageDigest(MESSAGE)), r1.subarray(65), { lowS: false, prehash: false })) {
    throw new Error('the high-s signature does not satisfy ECDSA');
  }
  out.push(refused('high-s', highProof, 'a Secp256r1 signature with a high s'));
  const k1 = await sign(k.secp256k1);
  out.push(refused('flag', concat(Uint8Array.of(2), k1.subarray(1)), 'a Secp256k1 signature under the Secp256r1 flag'));
  const otherKey = Secp256k1Keypair.fromSecretKey(fromHex(SECRETS.other_secp256k1));
  const forged = concat(k1.subarray(0, 65), (await sign(otherKey)).subarray(65));
  out.push(refused('another-key', forged, 'a Secp256k1 signature carrying another key than the one that made it'));
  const under = base64Decode(msKey.combinePartialSignatures([(await k.secp256k1.signPersonalMessage(MESSAGE)).signature]));
  out.push(refused('multisig-threshold', under, 'a multisig signed with weight 1, under its threshold 3'));
  out.push(refused('multisig-extra-bit', multisigWith(multisig, (m) => { m.bitmap |= 1; }), 'a multisig whose bitmap names a member that did not sign'));
  out.push(refused('multisig-trailing', concat(multisig, Uint8Array.of(0)), 'a multisig with a byte after it'));

  // the SDK's signatures are the ones this package's checks take, and refuse
  const digest = personalMessageDigest(MESSAGE);
  for (const v of out) {
    const proof = fromHex(v.proof);
    if (v.kind === 'identity-proof-scheme') {
      const signer = checkSignature(proof, digest);
      if (signer.address !== v.address) throw new Error(`${v.name}: the check proves ${signer.address}, not ${v.address}`);
      v.node = signer.nodeCheck !== null;
    } else {
      let taken = true;
      try {
        checkSignature(proof, digest);
      } catch {
        taken = false;
      }
      if (taken) throw new Error(`${v.name} was taken`);
    }
  }
  return out;
}
