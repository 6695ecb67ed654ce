// Opens an escrow on a Sui node through @mysten/sui and makes paid JSON-RPC calls over DTP
// (demo/sui-escrow.js), printing what happened as one JSON line; the Python test
// (tests/web/test_sui_escrow.py) runs it against the node stand-in.
//
//   node --experimental-websocket scripts/sui-escrow-client.mjs < job.json

import { suiEscrowReport } from '../demo/sui-escrow.js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const report = await suiEscrowReport(JSON.parse(Buffer.concat(chunks).toString('utf8')));
process.stdout.write(`${JSON.stringify(report)}\n`);
