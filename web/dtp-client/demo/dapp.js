// The dApp demo's flow (demo/dapp.html; node runs it too, scripts/dapp-client.mjs): a
// wallet opens an escrow on the ledger through the demo's HTTP bridge, connects to the
// provider's JSON-RPC service over DTP, pays each call with a receipt, and closes; the
// provider claims what the receipts say. Then a wallet that is not on the provider's
// allow list tries the same and is refused, by the ledger and by the DTP server.
//
// The wallet is a test key (an Ed25519 seed) standing in for a browser wallet: it signs
// personal messages (the DTP identity proof) and LocalLedger transactions
// (localTransactionSigner: a Sui transaction signature over LocalLedger's transaction
// bytes, which a real wallet's sui:signTransaction would not sign), and nothing else. The receipts are
// signed by a session key the page makes and the wallet authorises once, in the open
// transaction (transport_control::open_with_session_key, docs/escrow.md 6.2): per
// connection the wallet is asked for that transaction and the identity proof, whatever
// the number of calls.

import { fromUtf8, utf8 } from '../src/bytes.js';
import { LocalLedgerBridge, localTransactionSigner } from '../src/local-ledger.js';
import { Payment, sessionKey } from '../src/receipt.js';
import { connect } from '../src/websocket.js';

/** The test wallet: a DTP signer that also signs LocalLedger transactions (a stand-in
 * for a browser wallet, whose sui:signTransaction takes Sui transactions only). */
export const testWallet = localTransactionSigner;

/** The demo's ledger bridge (dtp.ledger.local.bridge): the package's LocalLedgerBridge,
 * with the shape the flow below uses. */
export class Bridge extends LocalLedgerBridge {
  /** spending_cap::create then transport_control::open_with_session_key: the connection
   * and its escrow, whose receipts `session` signs. */
  openEscrow(wallet, info, deposit, session) {
    return super.openEscrow(wallet, { host: info.host, port: info.port, deposit, session });
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
    cid: escrow.connection, // the connection ID as the ledger names it ("0x..."): connect() takes it as it is
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
