// Collaborative values of a dtp graph, for Yjs in a page (or in Node): the records a
// document is stored as, and a replica that applies them in causal order -- the
// JavaScript twin of dtp.graph.collab and dtp.graph._ydoc (docs/graph.md,
// "Collaborative values"). No imports: the caller passes its Yjs module (`Y`).
//
// A document in field F of node S: S.F links to the node D = "S/F"; D's field
// "<client>.<chunk>" links to the chunk node "D/<client>.<chunk>", whose field "<seq>"
// holds record <seq> of that author (chunk = floor(seq / 64)). A record is the string
// "y1:" + base64 of: client, seq, the author's clock after it (lib0 varuints), its
// deps (the other authors' clocks its author had that changed since its previous
// record: a count, then client and clock pairs) and the Yjs update (format v1).

export const CHUNK = 64;
export const PREFIX = 'y1:';

function writeVaruint(out, n) {
  // (up to 2**53: Yjs's client ids are 32 bits, clocks and seqs far below)
  for (;;) {
    const low = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) {
      out.push(low | 128);
    } else {
      out.push(low);
      return;
    }
  }
}

function readVaruint(bytes, at) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (at >= bytes.length || scale > 2 ** 56) throw new Error('a record that ends inside a number');
    const byte = bytes[at++];
    value += (byte & 127) * scale;
    if (!(byte & 128)) return [value, at];
    scale *= 128;
  }
}

function toBase64(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function fromBase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

export function encodeRecord(record) {
  const head = [];
  writeVaruint(head, record.client);
  writeVaruint(head, record.seq);
  writeVaruint(head, record.clock);
  const deps = Object.entries(record.deps || {})
    .map(([c, t]) => [Number(c), t])
    .sort((a, b) => a[0] - b[0]);
  writeVaruint(head, deps.length);
  for (const [c, t] of deps) {
    writeVaruint(head, c);
    writeVaruint(head, t);
  }
  const body = new Uint8Array(head.length + record.update.length);
  body.set(head, 0);
  body.set(record.update, head.length);
  return PREFIX + toBase64(body);
}

export function decodeRecord(text) {
  if (typeof text !== 'string' || !text.startsWith(PREFIX)) return null;
  try {
    const body = fromBase64(text.slice(PREFIX.length));
    let at = 0;
    let client, seq, clock, count;
    [client, at] = readVaruint(body, at);
    [seq, at] = readVaruint(body, at);
    [clock, at] = readVaruint(body, at);
    [count, at] = readVaruint(body, at);
    const deps = {};
    for (let i = 0; i < count; i++) {
      let c, t;
      [c, at] = readVaruint(body, at);
      [t, at] = readVaruint(body, at);
      deps[c] = t;
    }
    if (at >= body.length) return null;
    return { client, seq, clock, deps, update: body.subarray(at) };
  } catch (err) {
    return null;
  }
}

export function chunkSoul(docSoul, client, seq) {
  return docSoul + '/' + client + '.' + Math.floor(seq / CHUNK);
}

// A replica of one document: `doc` (a Y.Doc) fed with records by `add(record)` in causal
// order; local edits (any transaction whose origin is not this replica) become records
// handed to `write(record, text)`.
export class Replica {
  constructor(Y, docSoul, write) {
    this.Y = Y;
    this.docSoul = docSoul;
    this.doc = new Y.Doc();
    this.write = write || null;
    this.next = new Map(); // author -> seq of its next record to apply
    this.waiting = new Map(); // author -> Map(seq -> record)
    this.deps = new Map(); // author -> {client: clock} so far
    this.seen = new Map(); // the others' clocks our last local record named
    this.skipped = 0;
    this.doc.on('update', (update, origin) => {
      if (origin === this) return;
      const client = this.doc.clientID;
      const seq = this.next.get(client) || 0;
      this.next.set(client, seq + 1);
      const deps = {};
      for (const [c, t] of this.vector()) {
        if (c !== client && this.seen.get(c) !== t) {
          deps[c] = t;
          this.seen.set(c, t);
        }
      }
      const record = { client, seq, clock: this.Y.getState(this.doc.store, client), deps, update };
      if (this.write) this.write(record, encodeRecord(record));
    });
  }

  vector() {
    return this.Y.decodeStateVector(this.Y.encodeStateVector(this.doc));
  }

  has(client, seq) {
    return seq < (this.next.get(client) || 0) || !!(this.waiting.get(client) || new Map()).has(seq);
  }

  // A record read from the graph (its text), found in `chunk` under field `field`.
  take(chunk, field, text) {
    const record = decodeRecord(text);
    if (!record || String(record.seq) !== field || chunkSoul(this.docSoul, record.client, record.seq) !== chunk) {
      this.skipped++;
      return 0;
    }
    return this.add(record);
  }

  add(record) {
    const { client, seq } = record;
    if (this.has(client, seq)) return 0;
    if (client === this.doc.clientID) {
      // another replica drew our client id (Yjs draws 32 random bits): take another
      this.doc.clientID = Math.floor(Math.random() * 2 ** 32);
    }
    if (!this.waiting.has(client)) this.waiting.set(client, new Map());
    this.waiting.get(client).set(seq, record);
    if (seq !== (this.next.get(client) || 0)) return 0;
    return this.pump(client);
  }

  pump(first) {
    let applied = 0;
    let have = this.vector();
    const ready = [first];
    while (ready.length) {
      const author = ready.pop();
      const waiting = this.waiting.get(author);
      let n = this.next.get(author) || 0;
      while (waiting && waiting.has(n)) {
        const record = waiting.get(n);
        const deps = Object.assign({}, this.deps.get(author) || {}, record.deps);
        let missing = false;
        for (const c of Object.keys(deps)) {
          if (Number(c) !== author && (have.get(Number(c)) || 0) < deps[c]) missing = true;
        }
        if (missing) break;
        waiting.delete(n);
        this.deps.set(author, deps);
        n += 1;
        this.next.set(author, n);
        try {
          this.Y.applyUpdate(this.doc, record.update, this);
        } catch (err) {
          this.skipped++;
        }
        applied++;
        have = this.vector();
        for (const other of this.waiting.keys()) {
          if (other !== author && !ready.includes(other)) ready.push(other);
        }
      }
      if (waiting && waiting.size === 0) this.waiting.delete(author);
    }
    return applied;
  }
}

// Bind a replica of the document in field `field` of node `soul` to a gun.js chain
// (`gun`): records are read from, and local edits written to, the graph's nodes as
// above. Returns the replica; `onChange()` is called after each change it applies.
export function bindGun(Y, gun, soul, field, onChange) {
  const docSoul = soul + '/' + field;
  const followed = new Set();
  let linked = false;
  const replica = new Replica(Y, docSoul, (record, text) => {
    const chunk = chunkSoul(docSoul, record.client, record.seq);
    gun.get(chunk).put({ [String(record.seq)]: text });
    if (!followed.has(chunk)) {
      gun.get(docSoul).put({ [chunk.slice(docSoul.length + 1)]: { '#': chunk } });
      follow(chunk);
    }
    if (!linked) {
      gun.get(soul).put({ [field]: { '#': docSoul } });
      linked = true;
    }
  });
  function follow(chunk) {
    if (followed.has(chunk)) return;
    followed.add(chunk);
    gun.get(chunk).on((node) => {
      let took = 0;
      for (const key of Object.keys(node || {})) {
        if (key !== '_' && typeof node[key] === 'string') took += replica.take(chunk, key, node[key]);
      }
      if (took && onChange) onChange();
    });
  }
  gun.get(docSoul).on((node) => {
    for (const key of Object.keys(node || {})) {
      const target = node[key] && node[key]['#'];
      if (key !== '_' && target === docSoul + '/' + key) follow(target);
    }
  });
  gun.get(soul).get(field).once((value) => {
    if (value) linked = true;
  });
  return replica;
}
