// Runs the dApp demo's flow (demo/dapp.js) against examples/dapp_demo.py and prints what
// happened as one JSON line; tests/web/test_dapp.py runs it.
//
//   node scripts/dapp-client.mjs < job.json      (job: {base, seed, deniedSeed})

import { dappReport } from '../demo/dapp.js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const report = await dappReport(JSON.parse(Buffer.concat(chunks).toString('utf8')));
process.stdout.write(`${JSON.stringify(report)}\n`);
