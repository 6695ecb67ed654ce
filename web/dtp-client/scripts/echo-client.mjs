// Connects to a DTP echo service over WebSocket and reports what happened, as one JSON
// line: the Python interop test (tests/web/test_browser_client.py) runs it.
//
//   node --experimental-websocket scripts/echo-client.mjs < job.json
//
// job: {url, serverKey (hex), seed (hex: the Ed25519 key standing in for a wallet),
//       deniedSeed (hex, optional: a key the server refuses)}

import { ConnectionRefused, connect, ed25519Signer, fromHex } from '../src/index.js';

async function readJob() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

function pattern(n) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + 7) & 0xff;
  return out;
}

function same(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function session(job, serverKey) {
  const signer = ed25519Signer(fromHex(job.seed));
  const connection = await connect(job.url, { signer, serverKey: serverKey ?? undefined, expectedServerKey: job.serverKey });
  const result = { pattern: connection.pattern, address: connection.address, serverKey: Buffer.from(connection.serverStaticKey).toString('hex') };
  // the first stream is the connection's own: a server whose application ends it ends
  // the connection (dtp.aio does), so the second stream goes first
  const first = await connection.openStream();
  const second = await connection.openStream();
  // more than one record and more than a quarter of the peer's windows
  const big = pattern(3 * 1024 * 1024 + 123);
  const [, back] = await Promise.all([second.end(big), second.readAll()]);
  result.bigStream = second.id;
  result.bigEchoed = same(back, big);
  result.bigLength = back.length;
  await first.end(new TextEncoder().encode(`hello over ${connection.pattern}`));
  result.echo = new TextDecoder().decode(await first.readAll());
  result.firstStream = first.id;
  await connection.close(0, 'bye');
  result.closed = connection.closeInfo.code;
  return result;
}

const job = await readJob();
const report = {};
report.ik = await session(job, job.serverKey);
report.xx = await session(job, null);
if (job.deniedSeed) {
  try {
    await connect(job.url, { signer: ed25519Signer(fromHex(job.deniedSeed)), serverKey: job.serverKey });
    report.denied = { refused: false };
  } catch (err) {
    report.denied = { refused: err instanceof ConnectionRefused, code: err.code, reason: err.reason ?? err.message };
  }
}
process.stdout.write(`${JSON.stringify(report)}\n`);
