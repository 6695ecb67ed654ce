// A wallet of every Sui signature scheme, made with Mysten's TypeScript SDK (@mysten/sui)
// from fixed test keys, each a DTP signer (keypairSigner): Ed25519, Secp256k1, Secp256r1,
// a passkey (a P-256 key behind a software WebAuthn authenticator, or, in a browser, the
// browser's own through navigator.credentials), a 2-of-4 multisig and a zkLogin account
// (the proof of Mysten's sui-crypto tests, valid on a node with the development verifying
// key and that test issuer's key). The vectors of docs/protocol.md section 8.4 are made
// from them (scripts/wallet-vectors.mjs); the tests connect with each
// (scripts/wallets-client.mjs, demo/wallets.html).

import { Ed25519Keypair } from '@mysten/sui/keypairs/ed25519';
import { PasskeyKeypair } from '@mysten/sui/keypairs/passkey';
import { Secp256k1Keypair } from '@mysten/sui/keypairs/secp256k1';
import { Secp256r1Keypair } from '@mysten/sui/keypairs/secp256r1';
import { MultiSigPublicKey } from '@mysten/sui/multisig';
import { ZkLoginSigner } from '@mysten/sui/zklogin';
import { p256 } from '@noble/curves/nist.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { concat, fromHex, utf8 } from '../src/bytes.js';
import { keypairSigner } from '../src/identity.js';

/** The fixed secrets (hex): each wallet's key, as the vectors name them. */
export const SECRETS = Object.freeze({
  ed25519: '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f',
  secp256k1: '1111111111111111111111111111111111111111111111111111111111111111',
  secp256r1: '2222222222222222222222222222222222222222222222222222222222222222',
  passkey: '3333333333333333333333333333333333333333333333333333333333333333',
  // another key of each kind: a multisig member that does not sign, a forger
  other_secp256k1: '4444444444444444444444444444444444444444444444444444444444444444',
});

/** The origin and relying party of the software passkey. */
export const PASSKEY_ORIGIN = 'https://wallet.example.org';

/** zkLogin inputs that verify: those of Mysten's sui-crypto tests (issuer
 * https://id.twitch.tv/oauth2, key id "1", max epoch 10), with their ephemeral key. */
export const ZKLOGIN = Object.freeze({
  inputs: {
    proofPoints: {
      a: [
        '17318089125952421736342263717932719437717844282410187957984751939942898251250',
        '11373966645469122582074082295985388258840681618268593976697325892280915681207',
        '1',
      ],
      b: [
        [
          '5939871147348834997361720122238980177152303274311047249905942384915768690895',
          '4533568271134785278731234570361482651996740791888285864966884032717049811708',
        ],
        [
          '10564387285071555469753990661410840118635925466597037018058770041347518461368',
          '12597323547277579144698496372242615368085801313343155735511330003884767957854',
        ],
        ['1', '0'],
      ],
      c: [
        '15791589472556826263231644728873337629015269984699404073623603352537678813171',
        '4547866499248881449676161158024748060485373250029423904113017422539037162527',
        '1',
      ],
    },
    issBase64Details: { value: 'wiaXNzIjoiaHR0cHM6Ly9pZC50d2l0Y2gudHYvb2F1dGgyIiw', indexMod4: 2 },
    headerBase64: 'eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjEifQ',
    addressSeed: '20794788559620669596206457022966176986688727876128223628113916380927502737911',
  },
  maxEpoch: 10,
  ephemeralSecret: '9bf49a6a0755f953811fce125f2683d50429c3bb49e074147e0089a52eae155f',
  // the issuer's key (JWK) that proof was made under, for a node asked to use it
  jwk: {
    iss: 'https://id.twitch.tv/oauth2',
    kid: '1',
    kty: 'RSA',
    e: 'AQAB',
    alg: 'RS256',
    n: '6lq9MQ-q6hcxr7kOUp-tHlHtdcDsVLwVIw13iXUCvuDOeCi0VSuxCCUY6UmMjy53dX00ih2E4Y4UvlrmmurK0eG26b-HMNNAvCGsVXHU3RcRhVoHDaOwHwU72j7bpHn9XbP3Q3jebX6KIfNbei2MiR0Wyb8RZHE-aZhRYO8_-k9G2GycTpvc-2GBsP8VHLUKKfAs2B6sW3q3ymU6M0L-cFXkZ9fHkn9ejs-sqZPhMJxtBPBxoUIUQFTgv4VXTSv914f_YkNw-EjuwbgwXMvpyr06EyfImxHoxsZkFYB-qBYHtaMxTnFsZBr6fn8Ha2JqT1hoP7Z5r5wxDu3GQhKkHw',
  },
});

function base64url(bytes) {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * A WebAuthn authenticator in software, as the SDK's PasskeyKeypair asks one (its
 * PasskeyProvider): a P-256 key whose assertions carry authenticator data for
 * `origin`'s host (user present and verified, a counter) and the client data a browser
 * writes. Deterministic (RFC 6979), so its signatures are vectors.
 */
export class SoftwarePasskey {
  constructor(secretHex, origin = PASSKEY_ORIGIN) {
    this.secret = fromHex(secretHex);
    this.origin = origin;
    this.publicKey = p256.getPublicKey(this.secret, true);
    this.counter = 0;
  }

  async create() {
    throw new Error('a software passkey exists already: build its PasskeyKeypair from publicKey');
  }

  async get(challenge) {
    this.counter += 1;
    const rpIdHash = sha256(utf8(new URL(this.origin).hostname));
    const authenticatorData = concat(rpIdHash, Uint8Array.of(0x05), Uint8Array.of(0, 0, 0, this.counter));
    const clientDataJSON = utf8(JSON.stringify({
      type: 'webauthn.get',
      challenge: base64url(challenge),
      origin: this.origin,
      crossOrigin: false,
    }));
    const signed = concat(authenticatorData, sha256(clientDataJSON));
    const signature = p256.sign(signed, this.secret, { lowS: false, format: 'der' });
    return { response: { authenticatorData, clientDataJSON, signature } };
  }
}

function keypairs() {
  return {
    ed25519: Ed25519Keypair.fromSecretKey(fromHex(SECRETS.ed25519)),
    secp256k1: Secp256k1Keypair.fromSecretKey(fromHex(SECRETS.secp256k1)),
    secp256r1: Secp256r1Keypair.fromSecretKey(fromHex(SECRETS.secp256r1)),
    otherSecp256k1: Secp256k1Keypair.fromSecretKey(fromHex(SECRETS.other_secp256k1)),
  };
}

/** The 2-of-4 multisig: Ed25519 (1), Secp256k1 (1), Secp256r1 (2), another Secp256k1
 * (1); threshold 3. */
export function multisigKey() {
  const k = keypairs();
  return MultiSigPublicKey.fromPublicKeys({
    threshold: 3,
    publicKeys: [
      { publicKey: k.ed25519.getPublicKey(), weight: 1 },
      { publicKey: k.secp256k1.getPublicKey(), weight: 1 },
      { publicKey: k.secp256r1.getPublicKey(), weight: 2 },
      { publicKey: k.otherSecp256k1.getPublicKey(), weight: 1 },
    ],
  });
}

/** The zkLogin account of ZKLOGIN, as the SDK's ZkLoginSigner. */
export function zkLoginKeypair() {
  return new ZkLoginSigner({
    ephemeralSigner: Ed25519Keypair.fromSecretKey(fromHex(ZKLOGIN.ephemeralSecret)),
    inputs: ZKLOGIN.inputs,
    maxEpoch: ZKLOGIN.maxEpoch,
    legacyAddress: false,
  });
}

/**
 * The SDK signers of every scheme, by name: ed25519, secp256k1, secp256r1, passkey,
 * multisig (Secp256k1 and Secp256r1 sign: weight 3 of 3), zklogin. `passkeyProvider`: the
 * passkey's authenticator (the software one by default; a page may pass the SDK's
 * BrowserPasskeyProvider and the public key it created).
 */
export function sdkKeypairs({ passkeyProvider, passkeyPublicKey } = {}) {
  const k = keypairs();
  const soft = new SoftwarePasskey(SECRETS.passkey);
  const passkey = new PasskeyKeypair(passkeyPublicKey ?? soft.publicKey, passkeyProvider ?? soft);
  return {
    ed25519: k.ed25519,
    secp256k1: k.secp256k1,
    secp256r1: k.secp256r1,
    passkey,
    multisig: multisigKey().getSigner(k.secp256k1, k.secp256r1),
    zklogin: zkLoginKeypair(),
  };
}

/** The same, each a DTP signer ({address, scheme, signPersonalMessage}). */
export function sdkWallets(options) {
  return Object.fromEntries(Object.entries(sdkKeypairs(options)).map(([name, keypair]) => [name, keypairSigner(keypair)]));
}
