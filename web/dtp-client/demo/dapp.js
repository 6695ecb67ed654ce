// The dApp demo's flow (demo/dapp.html; node runs it too, scripts/dapp-client.mjs): a
// wallet opens an escrow on the ledger through the demo's HTTP bridge, connects to the
// provider's JSON-RPC service over DTP, pays each call with a receipt, and closes; the
// provider claims what the receipts say. Then a wallet that is not on the provider's
// allow list tries the same and is refused, by the ledger and by the DTP server.
//
// The wallet is a test key (an Ed25519 seed) standing in for a browser wallet: it signs
// personal messages (the DTP identity proof) and transactions (sui:signTransaction's
// stand-in, over LocalLedger's transaction bytes), and nothing else. The receipts are
// signed by a session key the page makes and the wallet authorises once, in the open
// transaction (transport_control::open_with_session_key, docs/escrow.md 6.2): per
// connection the wallet is asked for that transaction and the identity proof, whatever
// the number of calls.

import { ed25519 } from '@noble/curves/ed25519.js';
import { blake2b } from '@noble/hashes/blake2.js';
import { concat, fromHex, hex, utf8, fromUtf8 } from '../src/bytes.js';
import { ed25519Signer } from '../src/identity.js';
import { Payment, sessionKey } from '../src/receipt.js';
import { connect } from '../src/websocket.js';

const INTENT_TRANSACTION = Uint8Array.of(0, 0, 0);

/** The test wallet: a DTP signer that also signs transactions as a Sui wallet would. */
export function testWallet(seedHex) {
  const seed = fromHex(seedHex);
  const signer = ed25519Signer(seed);
  return {
    ...signer,
    seed,
    async signTransaction(txBytes) {
      const digest = blake2b(concat(INTENT_TRANSACTION, txBytes), { dkLen: 32 });
      return concat(Uint8Array.of(0), ed25519.sign(digest, seed), signer.publicKey);
    },
  };
}

/** The demo's ledger bridge (examples/dapp_demo.py): JSON over HTTP. */
export class Bridge {
  constructor(base) {
    this.base = base;
  }

  async call(name, body) {
    const response = await fetch(`${this.base}/ledger/${name}`, body === undefined
      ? {}
      : { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const answer = await response.json();
    if (!response.ok) {
      const error = new Error(answer.message);
      error.name = answer.error;
      throw error;
    }
    return answer;
  }

  /** Builds a transaction for `wallet`, has the wallet sign it, runs it. */
  async transact(wallet, call) {
    const { tx } = await this.call('build', { sender: wallet.address, ...call });
    const signature = await wallet.signTransaction(fromHex(tx));
    return this.call('execute', { tx, signature: hex(signature) });
  }

  /** spending_cap::create then transport_control::open_with_session_key: the connection
   * and its escrow, whose receipts `session` signs. */
  async openEscrow(wallet, info, deposit, session) {
    const cap = await this.transact(wallet, { call: 'spending_cap::create', max_per_epoch: deposit * 10 });
    const opened = await this.transact(wallet, {
      call: 'transport_control::open_with_session_key',
      host: info.host,
      port: info.port,
      cap: cap.value,
      public_key: hex(session.publicKey),
      deposit,
    });
    const event = opened.events.find((e) => e.name === 'ConnectionOpened');
    return { connection: opened.value, escrow: event.fields.escrow, deposit };
  }
}

async function rpc(payment, id, method, params) {
  const answer = await payment.request(utf8(JSON.stringify({ jsonrpc: '2.0', id, method, params })));
  return JSON.parse(fromUtf8(answer));
}

/** Runs the whole demo; `log(line)` shows progress. Resolves to what happened. */
export async function dappReport({ base, seed, deniedSeed, deposit = 1000 }, log = () => {}) {
  const bridge = new Bridge(base);
  const info = await bridge.call('info');
  const report = { receipts: [] };

  // 1. the allowed wallet: escrow, connection, three billed calls, close, the claim
  const wallet = testWallet(seed);
  log(`wallet ${wallet.address}`);
  await bridge.call('faucet', { address: wallet.address });
  const session = sessionKey();
  report.sessionKey = session.publicKeyHex;
  const escrow = await bridge.openEscrow(wallet, info, deposit, session);
  log(`escrow ${escrow.escrow} opened with ${deposit} MIST (connection ${escrow.connection}), session key ${session.publicKeyHex}`);
  const connection = await connect(info.url, {
    signer: wallet,
    serverKey: info.serverKey,
    cid: fromHex(escrow.connection.slice(2).padStart(64, '0')),
    port: info.port,
  });
  log(`DTP connection accepted (${connection.pattern}), identity ${connection.address}`);
  const payment = new Payment(connection, {
    scope: { package: info.package, escrow: escrow.escrow, connection: escrow.connection },
    sla: info.sla,
    deposit,
    key: session,
    onreceipt: (r) => {
      report.receipts.push({ requests: Number(r.totalRequests), amount: Number(r.totalAmount), nonce: Number(r.nonce) });
      log(`receipt #${r.nonce}: ${r.totalRequests} requests, ${r.totalAmount} MIST`);
    },
  });
  // stream 0, which the handshake opened, stays open for the connection's life: a dtp.aio
  // service sees its end as the connection's end; each call goes on a stream of its own
  const first = await connection.openStream();
  report.whoami = (await rpc(payment, 1, 'whoami', [])).result;
  log(`whoami -> ${report.whoami}`);
  report.add = (await rpc(payment, 2, 'add', [2, 40])).result;
  log(`add(2, 40) -> ${report.add}`);
  report.echo = (await rpc(payment, 3, 'echo', ['gm'])).result;
  log(`echo("gm") -> ${JSON.stringify(report.echo)}`);
  await first.end();
  const closed = await payment.close();
  report.closed = closed.code;
  report.escrow = escrow;
  // the provider claims when the connection ends: wait for it on the ledger
  for (let i = 0; i < 100; i++) {
    const state = await bridge.call('escrow', { id: escrow.escrow });
    report.claimed = state.claimed;
    report.receiptKey = state.receiptKey;
    if (state.claimed > 0) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  log(`the provider claimed ${report.claimed} MIST from the escrow`);

  // 2. a wallet not on the allow list: the ledger refuses its escrow, the server its connection
  const denied = testWallet(deniedSeed);
  log(`wallet ${denied.address} (not on the allow list)`);
  await bridge.call('faucet', { address: denied.address });
  report.denied = { address: denied.address };
  try {
    await bridge.openEscrow(denied, info, deposit, sessionKey());
    report.denied.ledger = 'opened';
  } catch (err) {
    report.denied.ledger = `${err.name}: ${err.message}`;
  }
  log(`ledger: ${report.denied.ledger}`);
  try {
    const c = await connect(info.url, { signer: denied, serverKey: info.serverKey, port: info.port });
    await c.close();
    report.denied.server = 'accepted';
  } catch (err) {
    report.denied.server = { name: err.name, code: err.code, reason: err.reason ?? err.message };
  }
  log(`DTP server: ${JSON.stringify(report.denied.server)}`);
  return report;
}
