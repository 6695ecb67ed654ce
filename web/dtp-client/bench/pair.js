// The JS per-call work of bench/rpc.js's DTP side, without a browser or a network: a
// client Connection and a ServerConnection of this package joined by an in-memory
// carrier (each record handed over in a later macrotask, as a WebSocket message
// would be), the client making sequential calls a stream each as rpc.js does.
//
//   node bench/pair.js [calls] [rounds]
//
// Prints the CPU time per call (both ends: this is one process), for profiling
// (`node --cpu-prof bench/pair.js`).

import { fromUtf8, utf8 } from '../src/bytes.js';
import { Connection } from '../src/connection.js';
import { ed25519Signer } from '../src/identity.js';
import { keyPair } from '../src/noise.js';
import { ServerConnection } from '../src/server.js';

class PairCarrier {
  constructor() {
    this.peer = null;
    this.connection = null;
    this.closed = false;
  }

  send(record) {
    const peer = this.peer;
    const copy = record.slice(); // (a WebSocket message is a buffer of its own)
    setImmediate(() => peer.connection?._onRecord(copy));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    setImmediate(() => this.peer.connection?._onCarrierClosed('closed'));
  }
}

const PARAMS = ['x'.repeat(64)];

async function serve(server) {
  for (;;) {
    let stream;
    try {
      stream = await server.acceptStream();
    } catch {
      return;
    }
    (async () => {
      const body = await stream.readAll();
      if (body.length === 0) return; // (stream 0, ended at the close)
      const request = JSON.parse(fromUtf8(body));
      await stream.end(utf8(JSON.stringify({ jsonrpc: '2.0', id: request.id, result: request.params })));
    })();
  }
}

async function main() {
  const calls = Number(process.argv[2] ?? 5000);
  const rounds = Number(process.argv[3] ?? 3);
  const serverKeys = keyPair(new Uint8Array(32).fill(7));
  const a = new PairCarrier();
  const b = new PairCarrier();
  a.peer = b;
  b.peer = a;
  const server = new ServerConnection(b, { staticKey: serverKeys });
  b.connection = server;
  const client = new Connection(a, { signer: ed25519Signer(new Uint8Array(32).fill(1)), serverKey: serverKeys.publicKey });
  a.connection = client;
  await Promise.all([server.accept(), client.open()]);
  serve(server);
  const first = await client.openStream();
  let id = 0;
  const run = async (n) => {
    for (let i = 0; i < n; i++) {
      id += 1;
      const stream = await client.openStream();
      await stream.end(utf8(JSON.stringify({ jsonrpc: '2.0', method: 'echo', params: PARAMS, id })));
      const answer = JSON.parse(fromUtf8(await stream.readAll()));
      if (answer.id !== id || answer.result[0] !== PARAMS[0]) throw new Error('a wrong answer');
    }
  };
  await run(Math.min(calls, 2000)); // (warm up)
  for (let r = 0; r < rounds; r++) {
    const cpu = process.cpuUsage();
    const wall = performance.now();
    await run(calls);
    const used = process.cpuUsage(cpu);
    const perCall = ((used.user + used.system) / calls).toFixed(1);
    console.log(`${calls} calls: ${perCall} µs CPU a call (both ends), wall ${(((performance.now() - wall) * 1000) / calls).toFixed(1)} µs`);
  }
  await first.end();
  await client.close();
}

main();
