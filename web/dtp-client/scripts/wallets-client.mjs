// Connects to a DTP echo service with a wallet of every Sui scheme, then with proofs the
// service must refuse (demo/wallets-flow.js), printing what happened as one JSON line;
// the Python test (tests/web/test_wallets.py) runs it against a dtp.aio server.
//
//   node --experimental-websocket scripts/wallets-client.mjs < job.json

import { walletsReport } from '../demo/wallets-flow.js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const report = await walletsReport(JSON.parse(Buffer.concat(chunks).toString('utf8')));
process.stdout.write(`${JSON.stringify(report)}\n`);
