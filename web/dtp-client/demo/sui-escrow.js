// The dApp flow with the escrow opened on Sui (src/sui.js): the wallet, of any Sui
// signature scheme, signs and executes spending_cap::create and
// transport_control::open_with_session_key through the SDK, then connects to the
// provider's JSON-RPC service over DTP, proving its address, and pays each call with a
// receipt its session key signs, as demo/dapp.js does on the demo's LocalLedger bridge. Node runs
// it (scripts/sui-escrow-client.mjs; tests/web/test_sui_escrow.py); a page runs it the same
// with its wallet's `sui:signAndExecuteTransaction` and `sui:signPersonalMessage`.

import { SuiGrpcClient } from '@mysten/sui/grpc';
import { Ed25519Keypair } from '@mysten/sui/keypairs/ed25519';
import { PasskeyKeypair } from '@mysten/sui/keypairs/passkey';
import { Secp256k1Keypair } from '@mysten/sui/keypairs/secp256k1';
import { Secp256r1Keypair } from '@mysten/sui/keypairs/secp256r1';
import { fromHex, fromUtf8, hex, utf8 } from '../src/bytes.js';
import { keypairSigner } from '../src/identity.js';
import { Payment, sessionKey } from '../src/receipt.js';
import { SuiEscrows, connectionCid, testSuiWallet } from '../src/sui.js';
import { connect } from '../src/websocket.js';
import { SoftwarePasskey } from './wallets.js';

/** The wallet's keypair of `scheme` from a 32-byte secret: any Sui account opens its
 * escrow and proves itself alike (docs/web-frontend.md). */
export function walletKeypair(scheme, seed) {
  switch (scheme ?? 'ed25519') {
    case 'ed25519':
      return Ed25519Keypair.fromSecretKey(seed);
    case 'secp256k1':
      return Secp256k1Keypair.fromSecretKey(seed);
    case 'secp256r1':
      return Secp256r1Keypair.fromSecretKey(seed);
    case 'passkey': {
      const authenticator = new SoftwarePasskey(hex(seed));
      return new PasskeyKeypair(authenticator.publicKey, authenticator);
    }
    default:
      throw new TypeError(`no test wallet of scheme ${scheme}`);
  }
}

async function rpc(payment, id, method, params) {
  const answer = await payment.request(utf8(JSON.stringify({ jsonrpc: '2.0', id, method, params })));
  return JSON.parse(fromUtf8(answer));
}

/**
 * `job`: `{node, package, host, port, url, serverKey, sla, seed, scheme, deposit, gas}`: the
 * Sui node's gRPC(-web) URL and the dtp package's ID there, the provider's Host (its object
 * ID) and service port, its DTP WebSocket URL and Noise key, the service's SLA, the test
 * wallet's 32-byte secret (hex) and scheme (walletKeypair: 'ed25519' by default,
 * 'secp256k1', 'secp256r1', 'passkey'), the deposit in MIST, and optionally `deniedSeed`,
 * an Ed25519 wallet the
 * host's firewall refuses, and `gas` ('sdk', the default: the SDK has the node simulate
 * each transaction to pick its gas; or 'wallet': the test wallet picks it). Resolves to
 * what happened.
 */
export async function suiEscrowReport(job, log = () => {}) {
  const client = new SuiGrpcClient({ network: 'localnet', baseUrl: job.node });
  const keypair = walletKeypair(job.scheme, fromHex(job.seed));
  const wallet = testSuiWallet(keypair, client, { gas: job.gas ?? 'sdk' });
  log(`wallet ${wallet.address}`);
  const escrows = new SuiEscrows({ client, wallet, packageId: job.package });
  const session = sessionKey();
  const report = { wallet: wallet.address, sessionKey: session.publicKeyHex, receipts: [] };

  const opened = await escrows.openEscrow({
    host: job.host,
    port: job.port,
    deposit: job.deposit,
    session,
    maxPerEpoch: job.deposit * 10,
  });
  report.escrow = { connection: opened.connection, escrow: opened.escrow, cap: opened.cap.objectId, deposit: opened.deposit };
  log(`escrow ${opened.escrow} opened with ${opened.deposit} MIST (connection ${opened.connection})`);

  // the same wallet proves who connects (its personal-message signature, of any scheme)
  const connection = await connect(job.url, {
    signer: keypairSigner(keypair),
    serverKey: job.serverKey,
    cid: connectionCid(opened.connection),
    port: job.port,
  });
  report.address = connection.address;
  const payment = new Payment(connection, {
    scope: { package: job.package, escrow: opened.escrow, connection: opened.connection },
    sla: job.sla,
    deposit: opened.deposit,
    key: session,
    onreceipt: (r) => report.receipts.push({ requests: Number(r.totalRequests), amount: Number(r.totalAmount), nonce: Number(r.nonce) }),
  });
  // stream 0 stays open for the connection's life (its end is the connection's end)
  const first = await connection.openStream();
  report.whoami = (await rpc(payment, 1, 'whoami', [])).result;
  report.add = (await rpc(payment, 2, 'add', [2, 40])).result;
  log(`whoami -> ${report.whoami}, add(2, 40) -> ${report.add}`);
  await first.end();
  report.closed = (await payment.close()).code;

  // a second connection on the same spending cap: no new cap asked of the wallet
  const again = await escrows.openEscrow({ host: job.host, port: job.port, deposit: job.deposit, session: sessionKey(), cap: opened.cap.objectId });
  report.second = { escrow: again.escrow, cap: again.cap.objectId };

  // a wallet the host's firewall does not admit: the ledger refuses its open
  if (job.deniedSeed) {
    const denied = testSuiWallet(Ed25519Keypair.fromSecretKey(fromHex(job.deniedSeed)), client, { gas: job.gas ?? 'sdk' });
    const refused = new SuiEscrows({ client, wallet: denied, packageId: job.package });
    try {
      await refused.openEscrow({ host: job.host, port: job.port, deposit: job.deposit, session: sessionKey() });
      report.denied = 'opened';
    } catch (err) {
      report.denied = { name: err.name, abort: err.abort, message: err.message };
    }
  }
  return report;
}
