// Runs Yjs (the pinned `yjs` package, the CRDT's reference implementation) for dtp's
// collaborative values: the interoperability tests (tests/graph/test_collab_interop.py)
// and the measurement of the dependency's edges (bench/yjs_edges.py). Reads one JSON job
// on stdin, writes one JSON answer on stdout:
//
//   {"generate": {"seed": S, "ops": N}}
//     -> {"updates": [{"client": C, "seq": K, "clock": T, "deps": D, "update": B64}, ...],
//         "logs": [[index, ...] x 3], "checkpoints": [[[position, CONTENT], ...] x 3],
//         "final": [CONTENT x 3]}
//       Three replicas edit one text, list and map (N operations in all): each local
//       edit is one update (K: its author's count of them, T: its author's clock
//       after it, D: {client: clock} of the others' clocks its author had that changed
//       since its previous update), sent to the two others over links that reorder, duplicate
//       and are cut by partitions; at the end every link is healed and drained. A
//       replica's log lists the updates in the order it applied them (its own included);
//       CONTENT ({"text": str, "array": [...], "map": {...}}) is what it showed after
//       `position` entries of its log (every 50, and at the end).
//   {"replay": {"updates": [B64, ...]}}
//     -> {"content": CONTENT, "state": B64 (the whole document as one update),
//         "vector": B64 (its state vector)}
//   {"records": {"texts": [RECORD, ...]}}
//     -> {"content": CONTENT, "waiting": n, "skipped": n}
//       RECORD: a record's text as a dtp graph stores it (docs/graph.md, "Collaborative
//       values"), fed in this order to the page's replica (dtp/graph/gun/demo/
//       yrecords.mjs), which applies them in causal order
//   {"author": {"texts": [RECORD, ...], "client": C, "edits": [EDIT, ...]}}
//     -> {"records": [[CHUNK, FIELD, RECORD], ...], "content": CONTENT}
//       the page's replica, fed the records, makes the edits (one transaction each) as
//       client C: the records it writes, where (chunk soul, field) for the document
//       in field "body" of node "doc/1"
//   {"edit": {"updates": [B64, ...], "client": C, "edits": [EDIT, ...]}}
//     -> {"updates": [B64, ...] (one a transaction), "content": CONTENT}
//       EDIT: ["insert", index, text] | ["delete", index, length] (the text, in UTF-16
//       code units as Yjs counts) | ["push", value] | ["remove", index, length] (the
//       list) | ["set", key, value] | ["unset", key] (the map)
//
// Updates are Yjs's update format v1 (Y.encodeStateAsUpdate, doc.on('update')), in
// standard base64. The root types are named "text" (Y.Text), "array" (Y.Array) and
// "map" (Y.Map), as dtp names them.
'use strict';

const Y = require('yjs');

function b64(bytes) {
  return Buffer.from(bytes).toString('base64');
}

function unb64(text) {
  return new Uint8Array(Buffer.from(text, 'base64'));
}

function content(doc) {
  const map = doc.getMap('map').toJSON();
  const sorted = {};
  for (const key of Object.keys(map).sort()) sorted[key] = map[key];
  return { text: doc.getText('text').toString(), array: doc.getArray('array').toJSON(), map: sorted };
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyzéßø€ ';

function generate({ seed, ops }) {
  const random = mulberry32(seed);
  const below = (n) => Math.floor(random() * n);
  const docs = [0, 1, 2].map((i) => {
    const doc = new Y.Doc();
    doc.clientID = 1000 + seed * 10 + i;
    return doc;
  });
  const updates = [];
  const logs = [[], [], []];
  const checkpoints = [[], [], []];
  const seqs = [0, 0, 0];
  // links[from][to]: updates in flight; an isolated replica's links carry nothing
  const links = [0, 1, 2].map(() => [[], [], []]);
  const isolated = [false, false, false];
  // what each replica had seen of the others when it made its last update: an update's
  // deps are what changed since (dtp's records carry them: docs/graph.md)
  const seen = [new Map(), new Map(), new Map()];
  const depsDelta = (r) => {
    const out = {};
    for (const [client, clock] of Y.decodeStateVector(Y.encodeStateVector(docs[r]))) {
      if (client === docs[r].clientID || seen[r].get(client) === clock) continue;
      out[client] = clock;
      seen[r].set(client, clock);
    }
    return out;
  };
  const logged = (r) => {
    if (logs[r].length % 50 === 0) checkpoints[r].push([logs[r].length, content(docs[r])]);
  };
  docs.forEach((doc, r) => {
    doc.on('update', (update, origin) => {
      if (origin !== 'local') return;
      const index = updates.length;
      updates.push({
        client: doc.clientID,
        seq: seqs[r]++,
        clock: Y.getState(doc.store, doc.clientID),
        deps: depsDelta(r),
        update: b64(update),
      });
      logs[r].push(index);
      logged(r);
      for (let to = 0; to < 3; to++) if (to !== r) links[r][to].push(index);
    });
  });
  const deliver = (from, to, at, keep) => {
    const queue = links[from][to];
    const index = queue[at];
    if (!keep) queue.splice(at, 1);
    Y.applyUpdate(docs[to], unb64(updates[index].update), 'remote');
    logs[to].push(index);
    logged(to);
  };
  const word = () => {
    let out = '';
    const n = 1 + below(3);
    for (let i = 0; i < n; i++) out += ALPHABET[below(ALPHABET.length)];
    return out;
  };
  for (let op = 0; op < ops; op++) {
    const roll = random();
    if (roll < 0.6) {
      const r = below(3);
      const doc = docs[r];
      doc.transact(() => {
        const text = doc.getText('text');
        const array = doc.getArray('array');
        const map = doc.getMap('map');
        const kind = below(6);
        if (kind === 0 || kind === 1) {
          text.insert(below(text.length + 1), word());
        } else if (kind === 2 && text.length > 0) {
          const at = below(text.length);
          text.delete(at, 1 + below(Math.min(4, text.length - at)));
        } else if (kind === 3) {
          array.insert(below(array.length + 1), [below(1000)]);
        } else if (kind === 4 && array.length > 0) {
          array.delete(below(array.length), 1);
        } else if (random() < 0.8) {
          map.set('k' + below(8), word());
        } else {
          map.delete('k' + below(8));
        }
      }, 'local');
    } else if (roll < 0.95) {
      const busy = [];
      for (let from = 0; from < 3; from++) {
        for (let to = 0; to < 3; to++) {
          if (links[from][to].length && !isolated[from] && !isolated[to]) busy.push([from, to]);
        }
      }
      if (busy.length) {
        const [from, to] = busy[below(busy.length)];
        const queue = links[from][to];
        const at = random() < 0.5 ? 0 : below(queue.length);
        deliver(from, to, at, random() < 0.1);
      }
    } else {
      const r = below(3);
      isolated[r] = !isolated[r];
    }
  }
  // heal and drain, in a random order
  for (;;) {
    const busy = [];
    for (let from = 0; from < 3; from++) {
      for (let to = 0; to < 3; to++) if (links[from][to].length) busy.push([from, to]);
    }
    if (!busy.length) break;
    const [from, to] = busy[below(busy.length)];
    deliver(from, to, below(links[from][to].length), false);
  }
  const final = docs.map(content);
  for (let r = 0; r < 3; r++) checkpoints[r].push([logs[r].length, final[r]]);
  return { updates, logs, checkpoints, final };
}

function replay({ updates }) {
  const doc = new Y.Doc();
  for (const update of updates) Y.applyUpdate(doc, unb64(update));
  return {
    content: content(doc),
    state: b64(Y.encodeStateAsUpdate(doc)),
    vector: b64(Y.encodeStateVector(doc)),
  };
}

function applyEdit(doc, [kind, a, b]) {
  if (kind === 'insert') doc.getText('text').insert(a, b);
  else if (kind === 'delete') doc.getText('text').delete(a, b);
  else if (kind === 'push') doc.getArray('array').push([a]);
  else if (kind === 'remove') doc.getArray('array').delete(a, b);
  else if (kind === 'set') doc.getMap('map').set(a, b);
  else if (kind === 'unset') doc.getMap('map').delete(a);
  else throw new Error('unknown edit ' + kind);
}

async function yrecords() {
  const path = require('path');
  const url = require('url');
  const file = path.join(__dirname, '..', '..', 'dtp', 'graph', 'gun', 'demo', 'yrecords.mjs');
  return import(url.pathToFileURL(file).href);
}

async function records({ texts }) {
  const { Replica, decodeRecord } = await yrecords();
  const replica = new Replica(Y, 'doc/1/body', null);
  for (const text of texts) {
    const record = decodeRecord(text);
    if (record) replica.add(record);
    else replica.skipped++;
  }
  let waiting = 0;
  for (const w of replica.waiting.values()) waiting += w.size;
  return { content: content(replica.doc), waiting, skipped: replica.skipped };
}

async function author({ texts, client, edits }) {
  const { Replica, decodeRecord, chunkSoul } = await yrecords();
  const out = [];
  const replica = new Replica(Y, 'doc/1/body', (record, text) => {
    out.push([chunkSoul('doc/1/body', record.client, record.seq), String(record.seq), text]);
  });
  replica.doc.clientID = client;
  for (const text of texts || []) replica.add(decodeRecord(text));
  for (const e of edits) replica.doc.transact(() => applyEdit(replica.doc, e));
  return { records: out, content: content(replica.doc) };
}

function edit({ updates, client, edits }) {
  const doc = new Y.Doc();
  doc.clientID = client;
  for (const update of updates || []) Y.applyUpdate(doc, unb64(update));
  const out = [];
  doc.on('update', (update, origin) => {
    if (origin === 'local') out.push(b64(update));
  });
  for (const e of edits) doc.transact(() => applyEdit(doc, e), 'local');
  return { updates: out, content: content(doc) };
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  input += chunk;
});
process.stdin.on('end', async () => {
  const job = JSON.parse(input);
  let answer;
  if (job.generate) answer = generate(job.generate);
  else if (job.replay) answer = replay(job.replay);
  else if (job.records) answer = await records(job.records);
  else if (job.author) answer = await author(job.author);
  else if (job.edit) answer = edit(job.edit);
  else throw new Error('unknown job: ' + Object.keys(job).join(', '));
  process.stdout.write(JSON.stringify(answer));
});
