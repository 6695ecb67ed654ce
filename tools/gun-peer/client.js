// gun.js as a client of a Gun relay, for the tests of dtp's Gun endpoint
// (tests/graph/test_gun_node.py). Reads one JSON job on stdin, writes one JSON answer
// on stdout (gun's own chatter goes to stderr):
//
//   {"peer": URL, "do": "put", "soul": S, "data": {...}}
//       -> {"ack": ack}                       a put, and its acknowledgement
//   {"peer": URL, "do": "get", "soul": S}
//       -> {"node": {...} | null}             a fresh client reads a node once
//   {"peer": URL, "do": "watch", "soul": S, "field": F, "value": V, "seconds": T}
//       -> {"ready": true}, then {"node": {...}}
//                                             subscribes (the first line says it has
//                                             asked), then waits until node[F] === V
//   {"peer": URL, "do": "sea", "alias": A, "profile": {...}}
//       -> {"pub", "acks", "forged", "read"}  a SEA user writes its profile, forged
//                                             writes are sent raw, a fresh client reads
//
// "forged": each forgery's acknowledgement (its err, or "ok"). They are sent raw, past
// the client's own SEA check (which would stop them before they leave).
'use strict';

const log = console.log;
console.log = (...args) => console.error(...args); // gun greets and warns on stdout
const Gun = require('gun/gun');
const SEA = require('gun/sea');
const WebSocket = require('ws');

function client(peer) {
  return Gun({ peers: [peer], WebSocket, localStorage: false, radisk: false, axe: false });
}

function within(ms, what, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function put(chain, data) {
  return within(10000, 'put', new Promise((resolve) => chain.put(data, (ack) => resolve(plain(ack)))));
}

function plain(ack) {
  const out = {};
  for (const key of ['err', 'ok']) {
    if (ack && ack[key] !== undefined) out[key] = ack[key];
  }
  return out;
}

function strip(node) {
  if (!node) return null;
  const out = {};
  for (const key of Object.keys(node)) {
    if (key !== '_') out[key] = node[key];
  }
  return out;
}

function once(chain, ms = 10000) {
  return within(ms, 'get', new Promise((resolve) => chain.once((data) => resolve(data), { wait: 2000 })));
}

// a put sent as it is, past the sender's own checks; resolves with its acknowledgement
function raw(gun, graph) {
  const root = gun._.root;
  return within(10000, 'raw put', new Promise((resolve) => {
    const id = root.ask((ack) => resolve(ack.err ? ack.err : 'ok'));
    root.opt.mesh.say({ '#': id, put: graph });
  }));
}

function node(soul, fields, state) {
  const out = { _: { '#': soul, '>': {} } };
  for (const [key, value] of Object.entries(fields)) {
    out[key] = value;
    out._['>'][key] = state;
  }
  return { [soul]: out };
}

async function signed(pair, soul, key, value, state) {
  // as SEA signs a field: {"#","."," :",">"}, its SHA-256, ECDSA P-256
  const sig = await SEA.sign({ '#': soul, '.': key, ':': value, '>': state }, pair, null, { raw: 1 });
  return sig.s;
}

async function sea(job) {
  const gun = client(job.peer);
  const user = gun.user();
  const pass = 'correct horse battery staple';
  const created = await within(20000, 'create', new Promise((resolve) => user.create(job.alias, pass, resolve)));
  if (created.err) throw new Error(`create: ${created.err}`);
  const authed = await within(20000, 'auth', new Promise((resolve) => user.auth(job.alias, pass, resolve)));
  if (authed.err) throw new Error(`auth: ${authed.err}`);
  const pub = user.is.pub;
  const acks = { profile: await put(user.get('profile'), job.profile) };

  const soul = `~${pub}/profile`;
  const now = () => Gun.state() + 1;
  const mallory = await SEA.pair();
  const theirs = gun._.root.graph[soul] || {};
  const forged = {};
  // 1. no signature at all
  forged.unsigned = await raw(gun, node(soul, { name: 'Mallory' }, now()));
  // 2. a value Alice signed, moved to another field (the signature binds the field)
  forged.moved = await raw(gun, node(soul, { motto: theirs.name }, now()));
  // 3. a value Alice signed, at a later state (the signature binds the state)
  forged.replayed = await raw(gun, node(soul, { name: theirs.name }, now()));
  // 4. signed by Mallory, naming herself as the signer, with no certificate
  let state = now();
  const sig = await signed(mallory, soul, 'name', 'Mallory', state);
  forged.other_key = await raw(gun, node(soul, { name: JSON.stringify({ ':': 'Mallory', '~': sig, '*': mallory.pub }) }, state));
  // 5. signed by Mallory as if she were Alice
  state = now();
  const sig2 = await signed(mallory, soul, 'name', 'Mallory', state);
  forged.wrong_key = await raw(gun, node(soul, { name: JSON.stringify({ ':': 'Mallory', '~': sig2 }) }, state));
  // 6. the account's own key, rewritten
  forged.account = await raw(gun, node(`~${pub}`, { pub: mallory.pub }, now()));
  // 7. Alice's alias claimed for Mallory's key, under another name
  forged.alias = await raw(gun, node(`~@${job.alias}`, { [`~${mallory.pub}`]: { '#': `~${pub}` } }, now()));

  // a fresh client reads Alice's profile (its own SEA checks every field it gets)
  const reader = client(job.peer);
  const read = strip(await once(reader.user(pub).get('profile')));
  return { pub, acks, forged, read, signed_name: theirs.name || null };
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const job = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  let answer;
  if (job.do === 'put') {
    answer = { ack: await put(client(job.peer).get(job.soul), job.data) };
  } else if (job.do === 'get') {
    answer = { node: strip(await once(client(job.peer).get(job.soul))) };
  } else if (job.do === 'watch') {
    const gun = client(job.peer);
    answer = await within(job.seconds * 1000, 'watch', new Promise((resolve) => {
      gun.get(job.soul).on((data) => {
        if (data && data[job.field] === job.value) resolve({ node: strip(data) });
      });
      // asked once the relay answered a get of ours (gun sends its gets on connecting)
      gun.get(job.soul).once(() => process.stdout.write('{"ready":true}\n'), { wait: 500 });
    }));
  } else if (job.do === 'sea') {
    answer = await sea(job);
  } else {
    throw new Error(`unknown job ${job.do}`);
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`client.js: ${err && err.stack || err}\n`);
  process.exit(1);
});
