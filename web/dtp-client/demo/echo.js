// The echo session the interop tests run, in node (scripts/echo-client.mjs) and in a
// browser (demo/index.html): IK, then XX, then a wallet the server refuses.
//
// job: {url, serverKey (hex), seed (hex: the Ed25519 key standing in for a wallet),
//       deniedSeed (hex, optional: a key the server refuses)}

import { ConnectionRefused, connect, ed25519Signer, fromHex, hex } from '../src/index.js';

function pattern(n) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + 7) & 0xff;
  return out;
}

function same(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function session(job, serverKey, log) {
  const signer = ed25519Signer(fromHex(job.seed));
  const connection = await connect(job.url, { signer, serverKey: serverKey ?? undefined, expectedServerKey: job.serverKey });
  log(`${connection.pattern}: accepted as ${connection.address}`);
  const result = { pattern: connection.pattern, address: connection.address, serverKey: hex(connection.serverStaticKey) };
  // the first stream is the connection's own: a server whose application ends it ends
  // the connection (dtp.aio does), so the second stream goes first
  const first = await connection.openStream();
  const second = await connection.openStream();
  // more than one record and more than a quarter of the peer's windows
  const big = pattern(job.bigLength ?? 3 * 1024 * 1024 + 123);
  const [, back] = await Promise.all([second.end(big), second.readAll()]);
  result.bigStream = second.id;
  result.bigEchoed = same(back, big);
  result.bigLength = back.length;
  log(`${connection.pattern}: ${back.length} bytes echoed on stream ${second.id}`);
  await first.end(new TextEncoder().encode(`hello over ${connection.pattern}`));
  result.echo = new TextDecoder().decode(await first.readAll());
  result.firstStream = first.id;
  log(`${connection.pattern}: "${result.echo}" on stream ${first.id}`);
  await connection.close(0, 'bye');
  result.closed = connection.closeInfo.code;
  return result;
}

export async function echoReport(job, log = () => {}) {
  const report = {};
  report.ik = await session(job, job.serverKey, log);
  report.xx = await session(job, null, log);
  if (job.deniedSeed) {
    try {
      await connect(job.url, { signer: ed25519Signer(fromHex(job.deniedSeed)), serverKey: job.serverKey });
      report.denied = { refused: false };
    } catch (err) {
      report.denied = { refused: err instanceof ConnectionRefused, code: err.code, reason: err.reason ?? err.message };
    }
    log(`denied wallet: ${report.denied.reason}`);
  }
  return report;
}
