// A page's wallets of every Sui scheme proving who they are to a DTP service (docs/protocol.md
// section 8.4): each of demo/wallets.js's SDK signers connects in IK and in XX to an echo
// service and reads back what it sent; then proofs the service must refuse -- another
// key's signature, a wrong scheme flag, a multisig under its threshold -- each from a
// signer that makes it. Node runs it (scripts/wallets-client.mjs), a browser page too
// (demo/wallets.html), where the passkey may be the browser's own (WebAuthn).

import { Secp256k1Keypair } from '@mysten/sui/keypairs/secp256k1';
import { base64Decode, concat, fromHex, fromUtf8, utf8 } from '../src/bytes.js';
import { keypairSigner } from '../src/identity.js';
import { connect } from '../src/websocket.js';
import { SECRETS, multisigKey, sdkKeypairs } from './wallets.js';

async function echo(url, options, text) {
  const connection = await connect(url, options);
  try {
    const stream = await connection.openStream();
    await stream.end(utf8(text));
    return { address: connection.address, pattern: connection.pattern, echo: fromUtf8(await stream.readAll()) };
  } finally {
    await connection.close();
  }
}

async function failure(url, options) {
  try {
    const connection = await connect(url, options);
    await connection.close();
    return { accepted: true };
  } catch (err) {
    return { name: err.name, code: err.code, message: err.message };
  }
}

/** A signer that sends `keypair`'s proof changed by `change` (bytes -> bytes). */
function altered(keypair, change) {
  const honest = keypairSigner(keypair);
  return {
    address: honest.address,
    async signPersonalMessage(message) {
      return change(base64Decode(await honest.signPersonalMessage(message)));
    },
  };
}

/**
 * `job`: `{url, serverKey, schemes?}` -- the echo service's WebSocket URL and Noise key,
 * and the schemes to connect with (all of sdkKeypairs' by default); `keypairs`: signers
 * to use instead of some (a browser's passkey). Resolves to `{schemes: {name: {address,
 * IK, XX}}, refused: {name: failure}}`.
 */
export async function walletsReport(job, log = () => {}, keypairs = {}) {
  const all = { ...sdkKeypairs(), ...keypairs };
  const report = { schemes: {}, refused: {} };
  for (const name of job.schemes ?? Object.keys(all)) {
    const signer = keypairSigner(all[name]);
    const run = { address: signer.address };
    for (const pattern of ['IK', 'XX']) {
      const options = { signer, ...(pattern === 'IK' ? { serverKey: job.serverKey } : {}) };
      run[pattern] = await echo(job.url, options, `hello from ${name} over ${pattern}`);
      log(`${name} (${signer.address}) over ${pattern}: ${run[pattern].echo}`);
    }
    report.schemes[name] = run;
  }
  const other = Secp256k1Keypair.fromSecretKey(fromHex(SECRETS.other_secp256k1)).getPublicKey().toRawBytes();
  const k1 = all.secp256k1;
  const forgeries = {
    // another key: the signature of one key, the public key (and so the address) of another
    'another-key': altered(k1, (proof) => concat(proof.subarray(0, 65), other)),
    // a wrong scheme flag: a Secp256k1 proof sent as a Secp256r1 one
    'wrong-flag': altered(k1, (proof) => concat(Uint8Array.of(2), proof.subarray(1))),
    // a multisig under its threshold: its Secp256k1 member alone (weight 1 of 3)
    'multisig-threshold': {
      address: multisigKey().toSuiAddress(),
      async signPersonalMessage(message) {
        return multisigKey().combinePartialSignatures([(await k1.signPersonalMessage(message)).signature]);
      },
    },
  };
  for (const [name, signer] of Object.entries(forgeries)) {
    report.refused[name] = await failure(job.url, { signer }); // XX: the reason comes back
    log(`${name}: ${JSON.stringify(report.refused[name])}`);
  }
  report.refused['another-key-ik'] = await failure(job.url, { signer: forgeries['another-key'], serverKey: job.serverKey });
  return report;
}
