// The client's side alone of bench/rpc.js's DTP calls, without a network: a client
// Connection on the WebSocket carrier (websocket.js) over a stand-in WebSocket that
// answers each record the client sends with what a server sent back to it. Those answers
// are recorded first from a ServerConnection of this package (fixed keys on both ends,
// so the client's transcript, and so the server's, is the same each run), then replayed:
// the time taken is the client's work alone, as bench/rpc.js's dtpCalls does it (the
// request's JSON and UTF-8 included), each answer handed over in a later task as a
// WebSocket message is.
//
//   node bench/client.js [calls] [rounds] [profile.cpuprofile]
//
// prints the CPU time per call and, given a file name, writes a CPU profile of the
// replayed calls alone there (V8's sampling profiler, every 20 µs: DevTools opens it).
// In a page (bench/rpc.html), `(await import('./client.js')).replay(calls, rounds)`
// resolves to the µs a call of each round (wall clock: the page does nothing else).

import { fromUtf8, utf8 } from '../src/bytes.js';
import { Connection } from '../src/connection.js';
import { ed25519Signer } from '../src/identity.js';
import { keyPair } from '../src/noise.js';
import { ServerConnection } from '../src/server.js';
import { WebSocketCarrier } from '../src/websocket.js';

const PARAMS = ['x'.repeat(64)];
const SERVER_KEYS = keyPair(new Uint8Array(32).fill(7));
const SERVER_EPHEMERAL = keyPair(new Uint8Array(32).fill(8));
const CLIENT_EPHEMERAL = keyPair(new Uint8Array(32).fill(9));
const CLIENT_STATIC = keyPair(new Uint8Array(32).fill(10));
const SEED = new Uint8Array(32).fill(1);

/** Runs `task` in a later task (node: setImmediate; a page: a MessageChannel's message,
 * as a WebSocket message comes in a task of its own). */
const later = typeof setImmediate === 'function' ? setImmediate : (() => {
  const channel = new MessageChannel();
  const tasks = [];
  channel.port1.onmessage = () => tasks.shift()();
  return (task) => {
    tasks.push(task);
    channel.port2.postMessage(null);
  };
})();

function newClient(carrier) {
  return new Connection(carrier, {
    signer: ed25519Signer(SEED),
    serverKey: SERVER_KEYS.publicKey,
    ephemeralKey: CLIENT_EPHEMERAL,
    staticKey: CLIENT_STATIC,
  });
}

/** The client's calls, as rpc.js's dtpCalls makes them. */
async function calls(client, n, ids) {
  for (let i = 0; i < n; i++) {
    ids.next += 1;
    const id = ids.next;
    const stream = await client.openStream();
    await stream.end(JSON.stringify({ jsonrpc: '2.0', method: 'echo', params: PARAMS, id }));
    const answer = JSON.parse(fromUtf8(await stream.readAll()));
    if (answer.id !== id || answer.result[0] !== PARAMS[0]) throw new Error('a wrong answer');
  }
}

/** The server's records to the client for `total` calls, each with the number of records
 * the client had sent when it went. */
async function record(total) {
  const answers = [];
  let clientSent = 0;
  let client = null;
  let server = null;
  const toServer = {
    send(r) {
      clientSent += 1;
      const copy = r.slice();
      later(() => server._onRecord(copy));
    },
    close() {},
  };
  const toClient = {
    send(r) {
      const copy = r.slice();
      answers.push([clientSent, copy]);
      later(() => client._onRecord(copy));
    },
    close() {},
  };
  server = new ServerConnection(toClient, { staticKey: SERVER_KEYS, ephemeralKey: SERVER_EPHEMERAL });
  client = newClient(toServer);
  await Promise.all([server.accept(), client.open()]);
  (async () => {
    for (;;) {
      const stream = await server.acceptStream();
      (async () => {
        const body = await stream.readAll();
        if (body.length === 0) return;
        const request = JSON.parse(fromUtf8(body));
        await stream.end(utf8(JSON.stringify({ jsonrpc: '2.0', id: request.id, result: request.params })));
      })();
    }
  })();
  await client.openStream();
  await calls(client, total, { next: 0 });
  return answers;
}

/** A WebSocket that answers from the recording: after the client's k-th record, every
 * answer the server sent once it had k, each its own ArrayBuffer as a message's is. */
class ReplaySocket {
  constructor(answers) {
    this.answers = answers.map(([k, r]) => [k, r.buffer.slice(r.byteOffset, r.byteOffset + r.length)]);
    this.next = 0;
    this.sent = 0;
    this.readyState = 1;
    this.protocol = 'dtp.v1';
    this.listeners = {};
    this.deliver = () => {
      while (this.next < this.answers.length && this.answers[this.next][0] <= this.sent) {
        this.listeners.message({ data: this.answers[this.next][1] });
        this.next += 1;
      }
    };
  }

  addEventListener(type, listener) {
    this.listeners[type] = listener;
  }

  send() {
    this.sent += 1;
    later(this.deliver);
  }

  close() {
    this.readyState = 3;
  }
}

/** Records, then replays `rounds` rounds of `n` calls after a warm-up; `round(ms)` is
 * told each round's milliseconds and may return a promise (a profile's stop). */
export async function replay(n, rounds, { round = null, before = null } = {}) {
  const warm = Math.min(n, 2000);
  const answers = await record(warm + n * rounds);
  const ws = new ReplaySocket(answers);
  const carrier = new WebSocketCarrier(ws);
  const client = newClient(carrier);
  carrier.connection = client;
  await client.open();
  await client.openStream(); // (stream 0, held as rpc.js holds it)
  const ids = { next: 0 };
  await calls(client, warm, ids);
  await before?.();
  const perCall = [];
  for (let r = 0; r < rounds; r++) {
    const start = performance.now();
    await calls(client, n, ids);
    perCall.push(((performance.now() - start) * 1000) / n);
    await round?.(r);
  }
  return perCall;
}

async function main() {
  const { writeFileSync } = await import('node:fs');
  const { Session } = await import('node:inspector/promises');
  const n = Number(process.argv[2] ?? 5000);
  const rounds = Number(process.argv[3] ?? 3);
  const profile = process.argv[4];
  const session = profile ? new Session() : null;
  let cpu = null;
  await replay(n, rounds, {
    async before() {
      if (session) {
        session.connect();
        await session.post('Profiler.enable');
        await session.post('Profiler.setSamplingInterval', { interval: 20 });
        await session.post('Profiler.start');
      }
      cpu = process.cpuUsage();
    },
    round() {
      const used = process.cpuUsage(cpu);
      console.log(`${n} calls: ${((used.user + used.system) / n).toFixed(2)} µs CPU a call (the client alone)`);
      cpu = process.cpuUsage();
    },
  });
  if (session) writeFileSync(profile, JSON.stringify((await session.post('Profiler.stop')).profile));
  process.exit(0);
}

if (typeof process !== 'undefined' && process.argv?.[1]?.endsWith('client.js')) main();
