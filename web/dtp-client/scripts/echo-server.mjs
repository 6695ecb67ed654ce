// A DTP echo service in node, served through a relay (demo/echo-server.js): the server
// side of the Python interop test (tests/web/test_js_server.py).
//
//   node --experimental-websocket scripts/echo-server.mjs '{"relay": "ws://.../listen/echo", "staticKey": "<hex>", "denied": ["0x..."]}'
//
// It prints one JSON line once it listens ({"listening": true}), then one per client, and
// stops on SIGTERM or when its stdin closes.

import { serveEcho } from '../demo/echo-server.js';

const server = await serveEcho(JSON.parse(process.argv[2]), (line) => process.stdout.write(`${JSON.stringify(line)}\n`));
const stop = () => {
  server.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
