// A DTP echo service served from a page (or node) through a relay: each client's streams
// are read to their end and echoed back. `serveEcho(job, report)` listens at job.relay
// with the X25519 key job.staticKey (hex), refusing the Sui addresses in job.denied, and
// calls report(line) once it listens ({listening: true}) and once per client (its
// address, pattern, [stream ID, length] echoed, close code; or {error, code}). Used by
// demo/serve.html and scripts/echo-server.mjs.

import { serveThroughRelay } from '../src/relay.js';

async function echo(stream) {
  const data = await stream.readAll();
  await stream.end(data);
  return data.length;
}

async function served(connection) {
  const lengths = [];
  const done = [];
  (async () => {
    for (;;) {
      let stream;
      try {
        stream = await connection.acceptStream();
      } catch {
        return; // the connection ended
      }
      done.push(echo(stream).then((n) => lengths.push([stream.id, n]), () => {}));
    }
  })();
  const closed = await connection.closed;
  await Promise.all(done);
  return {
    address: connection.address,
    pattern: connection.pattern,
    streams: lengths.sort((a, b) => a[0] - b[0]),
    closed: closed.code,
  };
}

export async function serveEcho(job, report) {
  const denied = new Set(job.denied ?? []);
  const server = await serveThroughRelay(job.relay, {
    staticKey: job.staticKey,
    decide: ({ address }) => (denied.has(address) ? { reason: 'this wallet is not on the allow list' } : true),
    onError: (err) => report({ error: err.reason ?? err.message, code: err.code ?? null }),
  }, (connection) => served(connection).then(report));
  report({ listening: true });
  return server;
}
