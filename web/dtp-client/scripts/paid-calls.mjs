// A page's paid calls on the embedded ledger, from node: the wallet (a test key) opens an
// escrow through the ledger bridge (LocalLedgerBridge: transactions it signs itself,
// localTransactionSigner), connects with the connection ID as the ledger names it, makes
// `calls` echo calls paid by a Payment (its receipts as `every` says: by default a
// quarter of the SLA's minDeposit), closes, and prints what it did as one JSON line;
// tests/web/test_paid_calls.py runs it.
//
//   node scripts/paid-calls.mjs < job.json     (job: {base, seed, calls, deposit, every?})

import { fromUtf8, utf8 } from '../src/bytes.js';
import { LocalLedgerBridge, localTransactionSigner } from '../src/local-ledger.js';
import { Payment, sessionKey } from '../src/receipt.js';
import { connect } from '../src/websocket.js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const bridge = new LocalLedgerBridge(job.base);
const info = await bridge.info();
const wallet = localTransactionSigner(job.seed);
await bridge.faucet(wallet.address);
const session = sessionKey();
const opened = await bridge.openEscrow(wallet, { host: info.host, port: info.port, deposit: job.deposit, session });
const connection = await connect(info.url, { signer: wallet, serverKey: info.serverKey, cid: opened.connection, port: info.port });
const receipts = [];
const payment = new Payment(connection, {
  scope: { package: info.package, escrow: opened.escrow, connection: opened.connection },
  sla: info.sla,
  deposit: job.deposit,
  key: session,
  ...(job.every ? { every: job.every } : {}),
  onreceipt: (r) => receipts.push({ requests: Number(r.totalRequests), amount: Number(r.totalAmount), nonce: Number(r.nonce) }),
});
const first = await connection.openStream();
for (let i = 1; i <= job.calls; i++) {
  const answer = JSON.parse(fromUtf8(await payment.request(utf8(JSON.stringify({ jsonrpc: '2.0', id: i, method: 'echo', params: [i] })))));
  if (answer.id !== i || answer.result[0] !== i) throw new Error(`a wrong answer: ${JSON.stringify(answer)}`);
}
await first.end();
const closed = await payment.close();
const escrow = await bridge.escrow(opened.escrow);
process.stdout.write(`${JSON.stringify({
  connection: opened.connection, escrow: opened.escrow, cap: opened.cap, everyAmount: String(payment.everyAmount),
  receipts, closed: closed.code, receiptKey: escrow.receiptKey, sessionKey: session.publicKeyHex,
})}\n`);
