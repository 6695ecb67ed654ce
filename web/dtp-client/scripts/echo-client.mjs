// Connects to a DTP echo service over WebSocket and prints what happened as one JSON line
// (demo/echo.js); the Python interop test (tests/web/test_browser_client.py) runs it.
//
//   node --experimental-websocket scripts/echo-client.mjs < job.json
//
// (node 22 and later have the global WebSocket without the flag.)

import { echoReport } from '../demo/echo.js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const report = await echoReport(JSON.parse(Buffer.concat(chunks).toString('utf8')));
process.stdout.write(`${JSON.stringify(report)}\n`);
