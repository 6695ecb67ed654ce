// The graph's three privacy tiers for a gun.js app (docs/graph.md, "The tiers from a
// browser"): the page is a full peer of dtp's graph, through any Gun relay -- dtp's Gun
// endpoint (`python -m dtp.graph gun`) relays to Python peers over DTP sync.
//
//   installTiers(Gun);                                  // before Gun() is called
//   const gun = Gun({ peers: [location.origin + '/gun'] });
//   const me = storedIdentity(localStorage);            // the page's Sui key
//   const graph = tiers(gun, me);
//   await graph.protected('profile').put({ name: 'Ann' });          // signed
//   await graph.private('notes').addReader(bobsReaderKey);
//   await graph.private('notes').put({ text: 'for bob' });           // encrypted to bob
//   await graph.private('diary', { author: alice }).get();           // alice's, if a reader
//
// The public tier is gun's own API. installTiers makes every gun instance made after it
// refuse, as dtp peers do, a field of a protected or private soul that its author did
// not sign -- from a peer or from the app -- before it reaches the instance's graph (as
// SEA guards its user spaces); reads verify each field again.

import { fromHex, hex } from '../bytes.js';
import { GraphValueError, gunText, isLink, nameBytes, readText } from './format.js';
import { readerKeyOf } from './keys.js';
import * as priv from './private.js';
import * as signed from './signed.js';

/** A write a peer refused: `message` is its `err`. */
export class GraphWriteError extends Error {
  constructor(message) {
    super(message);
    this.name = 'GraphWriteError';
  }
}

/** Writing where only another author signs (Python's dtp.errors.NotTheAuthor). */
export class NotTheAuthor extends Error {
  constructor(message) {
    super(message);
    this.name = 'NotTheAuthor';
  }
}

/** Reading a private value this identity holds no key for: never a reader, or removed
 * before it was written (Python's dtp.errors.NotAReader). */
export class NotAReader extends Error {
  constructor(message) {
    super(message);
    this.name = 'NotAReader';
  }
}

/** Why a field must be refused (Python's reason), or null: dtp's signed tiers' rules. */
export function refusal(soul, field, state, value) {
  if (typeof soul !== 'string' || typeof field !== 'string') return null;
  return signed.check(soul, field, state, value) ?? priv.check(soul, field, state, value);
}

function refusalText(soul, reason) {
  // (the words of dtp's Gun endpoint)
  const what = signed.isUserSpace(soul)
    ? "a dtp user space: only its owner's Ed25519 key signs there"
    : "a dtp private space: only its author's Ed25519 key signs there";
  const where = signed.isUserSpace(soul) ? 'Signed namespaces' : 'Privacy tiers';
  return `Error: '${soul.slice(0, 80)}' is ${what} (${reason}; docs/graph.md, '${where}').`;
}

/** Make every gun instance created from now on refuse unsigned or forged fields of dtp's
 * protected (`~0x...`) and private (`%0x...`) souls, counted per reason in
 * `refusedByReason(gun)`. With SEA loaded (sea.js before this call), SEA is told that
 * dtp's `~0x<address>/...` souls are none of its user spaces. */
export function installTiers(Gun) {
  if (!Gun.dtpTiers) {
    Gun.dtpTiers = true;
    Gun.on('opt', function (at) {
      if (!at.dtpTiers) {
        at.dtpTiers = { refused: {} };
        at.on('put', guard, at);
      }
      this.to.next(at);
    });
  }
  const pub = Gun.SEA?.opt?.pub;
  if (pub && !pub.dtpTiers) {
    // (gun's SEA takes ~0x<address>/path for the user space of a key "0x<address>.path")
    Gun.SEA.opt.pub = Object.assign((soul) => (signed.isUserSpace(String(soul)) ? undefined : pub(soul)), {
      dtpTiers: true,
    });
  }
  return Gun;
}

function guard(msg) {
  const at = this.as;
  const put = msg.put || {};
  const soul = put['#'];
  const reason = put['.'] ? refusal(soul, put['.'], put['>'], put[':']) : null;
  if (reason === null) {
    this.to.next(msg);
    return;
  }
  const counts = at.dtpTiers.refused;
  counts[reason] = (counts[reason] || 0) + 1;
  // as SEA refuses: the put is acknowledged with the error, and goes no further
  at.on('in', { '@': msg['#'], err: (msg.err = refusalText(soul, reason)) });
}

/** What installTiers' guard refused in this gun instance, per reason. */
export function refusedByReason(gun) {
  return { ...(gun._.root.dtpTiers?.refused ?? {}) };
}

/** The tiers over `gun`, acting as `identity` (keys.js; null reads only what anyone
 * reads). `timeout`: ms to wait for a peer's answer (a read) or acknowledgement (a put). */
export function tiers(gun, identity = null, { timeout = 10000 } = {}) {
  return new Tiers(gun, identity, timeout);
}

class Tiers {
  constructor(gun, identity, timeout) {
    this.gun = gun;
    this.identity = identity;
    this.timeout = timeout;
    this._loads = new Map();
    this._verified = new Map();
    this._spaces = new Map();
  }

  /** A node of `author`'s protected space (`~<author>/<path>`): anyone reads, the author
   * writes. `author`: a Sui address, this identity's by default. */
  protected(path = '', { author } = {}) {
    return new ProtectedNode(this, signed.userSoul(this._author(author), path));
  }

  /** A node of `author`'s private space: `path` is `<space>[/<node path>]`. */
  private(path, { author } = {}) {
    const [name, ...rest] = String(path).split('/');
    if (!priv.SPACE_NAME.test(name)) {
      throw new GraphValueError(`a private space's name is 1..64 of A-Z a-z 0-9 _ . -, not ${JSON.stringify(name)}`);
    }
    if (rest.some((part) => part === '' || part.includes('~') || part.includes('#'))) {
      throw new GraphValueError(`a private node's path has no empty part, '~' or '#': ${path}`);
    }
    const who = this._author(author);
    const key = `${who}/${name}`;
    if (!this._spaces.has(key)) this._spaces.set(key, new Space(this, who, name));
    const space = this._spaces.get(key);
    return new PrivateNode(space, space.root + (rest.length ? `/${rest.join('/')}` : ''));
  }

  /** What installTiers' guard refused in this gun instance, per reason. */
  refusedByReason() {
    return refusedByReason(this.gun);
  }

  _author(author) {
    const who = author ?? this.identity?.address;
    if (typeof who !== 'string' || !/^0x[0-9a-f]{64}$/.test(who)) {
      throw new GraphValueError("name the space's author: { author: <Sui address> }, or give an identity");
    }
    return who;
  }

  _mustAuthor(author, soul) {
    if (this.identity === null) throw new NotTheAuthor(`writing to ${soul.slice(0, 80)} needs its author's identity (${author})`);
    if (this.identity.address !== author) {
      throw new NotTheAuthor(`writing to ${soul.slice(0, 80)}: only its author ${author} signs there, not ${this.identity.address}`);
    }
    return this.identity;
  }

  /** Once a peer answered a get of `soul` (or the timeout passed): its fields are then in
   * the graph of the gun instance, which the relay keeps current. */
  load(soul) {
    let loading = this._loads.get(soul);
    if (loading === undefined) {
      loading = new Promise((resolve) => {
        const timer = setTimeout(resolve, this.timeout);
        this.gun.get(soul, () => {
          clearTimeout(timer);
          resolve();
        });
      });
      this._loads.set(soul, loading);
    }
    return loading;
  }

  /** [field, state, value] of a node's fields as the gun instance holds them. */
  fields(soul) {
    const node = this.gun._.root.graph[soul];
    const states = node?._?.['>'] ?? {};
    return Object.keys(node ?? {})
      .filter((field) => field !== '_' && states[field] !== undefined)
      .map((field) => [field, states[field], node[field]]);
  }

  /** Whether a field verifies (remembered per field and state, with the value it was for:
   * a value is checked once, and the cache holds no copy of it). */
  verifies(soul, field, state, value) {
    const key = `${soul}\u0000${field}\u0000${state}`;
    const kept = this._verified.get(key);
    if (kept !== undefined && kept[0] === value) return kept[1];
    const ok = refusal(soul, field, state, value) === null;
    if (this._verified.size > 4096) this._verified.clear();
    this._verified.set(key, [value, ok]);
    return ok;
  }

  /** A state for a write of these [soul, field]s: the clock, and above each one's own. */
  nextState(entries) {
    const Gun = this.gun.constructor;
    let state = (Gun.state ?? Date.now)();
    for (const [soul, field] of entries) {
      const held = this.gun._.root.graph[soul]?._?.['>']?.[field];
      if (held !== undefined && held >= state) state = held + 1 / 256;
      if (held !== undefined && state <= held) throw new GraphValueError(`no state is left above ${field} of ${soul}`);
    }
    return state;
  }

  /** Put one node's fields (already sealed) at `state`; resolves once a peer took it. */
  putNode(soul, fields, state) {
    return new Promise((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        done = true;
        reject(new GraphWriteError(`no peer acknowledged the put of ${soul.slice(0, 80)} within ${this.timeout} ms`));
      }, this.timeout);
      this.gun.get(soul).put(
        fields,
        (ack) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          if (ack.err) reject(new GraphWriteError(String(ack.err)));
          else resolve(state);
        },
        { state },
      );
    });
  }

  /** Subscribe to a node's changes: `deliver([field, state, value])` for each field whose
   * state moved. Returns {off()}. */
  watch(soul, deliver) {
    const seen = new Map(this.fields(soul).map(([f, s]) => [f, s]));
    let live = true;
    this.gun.get(soul).on((data, key, msg, eve) => {
      if (!live) {
        eve.off(); // (this listener only: the chain's off() would end every one of it)
        return;
      }
      for (const [field, state, value] of this.fields(soul)) {
        if (seen.get(field) === state) continue;
        seen.set(field, state);
        deliver([field, state, value]);
      }
    });
    return {
      off() {
        live = false;
      },
    };
  }
}

function flatten(soul, data, out, depth = 0) {
  if (depth > 32) throw new GraphValueError('nodes nested more than 32 deep');
  if (data === null || typeof data !== 'object' || Array.isArray(data) || Object.keys(data).length === 0) {
    throw new GraphValueError('put() takes a non-empty object of fields');
  }
  for (const [field, value] of Object.entries(data)) {
    nameBytes(field, 'a field name');
    if (field === '_') throw new GraphValueError("a field named '_' is where Gun keeps a node's metadata");
    if (value !== null && typeof value === 'object' && !Array.isArray(value) && !isLink(value)) {
      const child = `${soul}/${field}`;
      flatten(child, value, out, depth + 1);
      out.push([soul, field, gunText({ '#': child })]);
    } else {
      out.push([soul, field, gunText(value)]);
    }
  }
  return out;
}

function bySoul(writes) {
  const nodes = new Map();
  for (const [soul, field, value] of writes) {
    if (!nodes.has(soul)) nodes.set(soul, {});
    const node = nodes.get(soul);
    if (field in node) throw new GraphValueError(`put() writes field ${field} of node ${soul} twice`);
    node[field] = value;
  }
  return nodes;
}

class ProtectedNode {
  constructor(graph, soul) {
    this.graph = graph;
    this.soul = soul;
    this.author = signed.ownerOf(soul);
    this.tier = 'protected';
  }

  /** Write fields, signed by the author (nested objects become nodes `<soul>/<field>` of
   * the same space); resolves to their state once a peer acknowledged them. */
  async put(fields) {
    const me = this.graph._mustAuthor(this.author, this.soul);
    const writes = flatten(this.soul, fields, []);
    const nodes = bySoul(writes);
    const state = this.graph.nextState(writes);
    for (const [soul, node] of nodes) {
      const sealed = {};
      for (const [field, text] of Object.entries(node)) sealed[field] = signed.toWire(signed.seal(me, soul, field, state, text));
      await this.graph.putNode(soul, sealed, state);
    }
    return state;
  }

  /** The node's fields that verify, or null when it has none. */
  async get() {
    await this.graph.load(this.soul);
    const out = {};
    for (const [field, state, value] of this.graph.fields(this.soul)) {
      if (this.graph.verifies(this.soul, field, state, value)) out[field] = signed.open(value);
    }
    return Object.keys(out).length ? out : null;
  }

  async getField(field, fallback = undefined) {
    const node = await this.get();
    return node && field in node ? node[field] : fallback;
  }

  child(name) {
    return new ProtectedNode(this.graph, `${this.soul}/${name}`);
  }

  /** `callback({soul, field, value, state})` for every later change that verifies. */
  on(callback) {
    this.graph.load(this.soul);
    return this.graph.watch(this.soul, ([field, state, value]) => {
      if (this.graph.verifies(this.soul, field, state, value)) {
        callback({ soul: this.soul, field, value: signed.open(value), state });
      }
    });
  }
}

/** One private space as this identity sees it: its key node read and verified, the
 * content keys unwrapped (cached), and the author's writes (as Python's _tiers._Space). */
class Space {
  constructor(graph, author, name) {
    this.graph = graph;
    this.author = author;
    this.name = name;
    this.root = priv.spaceSoul(author, name);
    this.keysSoul = priv.keySoul(author, name);
    this.me = graph.identity ? hex(graph.identity.readerKey) : null;
    this.keys = new Map(); // key id (hex) -> content key
  }

  /** {readers: hex -> {state, on}, wraps: key id hex -> reader hex -> {state, field, body}}. */
  async keyNode() {
    await this.graph.load(this.keysSoul);
    const node = { readers: new Map(), wraps: new Map() };
    for (const [field, state, value] of this.graph.fields(this.keysSoul)) {
      const kind = priv.parseKeyField(field);
      if (kind === null || !this.graph.verifies(this.keysSoul, field, state, value)) continue;
      const body = priv.unpack(value).body;
      if (kind.kind === 'r') {
        node.readers.set(hex(kind.reader), { state, on: body[1] === 1 });
      } else {
        const id = hex(kind.keyId);
        if (!node.wraps.has(id)) node.wraps.set(id, new Map());
        node.wraps.get(id).set(hex(kind.reader), { state, field, body });
      }
    }
    return node;
  }

  current(node) {
    return [...node.readers].filter(([, r]) => r.on).map(([k]) => k);
  }

  /** Content key `keyId` (hex), unwrapped with this identity's reader key. */
  async contentKey(keyId, node = null) {
    const kept = this.keys.get(keyId);
    if (kept) return kept;
    if (this.me === null) throw new NotAReader(`reading ${this.root} needs a reader's identity`);
    const read = node ?? (await this.keyNode());
    const wrapped = read.wraps.get(keyId)?.get(this.me);
    if (!wrapped) {
      throw new NotAReader(
        `${this.graph.identity.address} (reader key ${this.me.slice(0, 16)}...) holds no key ${keyId} of ${this.root}: not a reader when the value was written`,
      );
    }
    const key = priv.unwrap(this.graph.identity.readerSecret, this.keysSoul, wrapped.field, wrapped.state, wrapped.body);
    this.keys.set(keyId, key);
    return key;
  }

  /** The plaintext value of a verified field of this space. */
  async open(soul, field, state, value) {
    const body = priv.unpack(value)?.body;
    const keyId = body ? priv.valueKeyId(body) : null;
    if (keyId === null) throw new priv.PrivateDataError(`${soul.slice(0, 80)}.${field.slice(0, 64)} holds no private value`);
    return readText(priv.openValue(await this.contentKey(hex(keyId)), soul, field, state, body));
  }

  /** The content key to write with now and the wraps it still needs (Python's _plan). */
  async plan(node) {
    const removed = new Set([...node.readers].filter(([, r]) => !r.on).map(([k]) => k));
    let best = null;
    for (const [keyId, wraps] of node.wraps) {
      const mine = wraps.get(this.me);
      if (!mine || [...wraps.keys()].some((r) => removed.has(r))) continue;
      if (best === null || mine.state > best.state || (mine.state === best.state && keyId > best.keyId)) {
        best = { state: mine.state, keyId };
      }
    }
    let keyId;
    let key;
    let recipients;
    if (best === null) {
      const fresh = priv.newContentKey();
      [keyId, key] = [hex(fresh.keyId), fresh.key];
      recipients = new Set([this.me, ...this.current(node)]);
    } else {
      keyId = best.keyId;
      key = await this.contentKey(keyId, node);
      const has = node.wraps.get(keyId);
      recipients = new Set(this.current(node).filter((r) => !has.has(r)));
    }
    this.keys.set(keyId, key);
    const records = [...recipients].sort().map((r) => ({ field: `w:${keyId}:${r}`, wrap: { key, reader: r } }));
    return { keyId, key, records };
  }

  /** Seal a key-node record at `state`: a wrap, or a reader flipped on or off. */
  record(item, state) {
    const me = this.graph.identity;
    const body = item.wrap
      ? priv.wrap(item.wrap.key, readerKeyOf(item.wrap.reader), this.keysSoul, item.field, state)
      : Uint8Array.of(priv.READER, item.on ? 1 : 0);
    return priv.sign(me, this.keysSoul, item.field, state, body);
  }

  /** Write key records first, then values (a reader that gets the value has its key). */
  async write(values, plan, records) {
    const entries = [...records.map((r) => [this.keysSoul, r.field]), ...values.map(([s, f]) => [s, f])];
    const state = this.graph.nextState(entries);
    if (records.length) {
      const node = {};
      for (const r of records) node[r.field] = this.record(r, state);
      await this.graph.putNode(this.keysSoul, node, state);
    }
    const me = this.graph.identity;
    for (const [soul, fields] of bySoul(values)) {
      const node = {};
      for (const [field, text] of Object.entries(fields)) {
        node[field] = priv.sign(me, soul, field, state, priv.sealValue(plan.key, fromHex(plan.keyId), soul, field, state, text));
      }
      await this.graph.putNode(soul, node, state);
    }
    return state;
  }

  async setReader(reader, on) {
    this.graph._mustAuthor(this.author, this.root);
    const key = hex(readerKeyOf(reader));
    if (key === this.me) throw new GraphValueError('the author always reads its own space: it is no reader to add or remove');
    const node = await this.keyNode();
    const was = node.readers.get(key)?.on ?? false;
    const records = [];
    if (on) {
      // every key of the space, so that a reader reads its past too
      for (const keyId of [...node.wraps.keys()].sort()) {
        const wraps = node.wraps.get(keyId);
        if (wraps.has(this.me) && !wraps.has(key)) {
          records.push({ field: `w:${keyId}:${key}`, wrap: { key: await this.contentKey(keyId, node), reader: key } });
        }
      }
    } else if (was) {
      // a new content key for what comes next, wrapped to the readers that stay
      node.readers.set(key, { state: 0, on: false });
      const fresh = priv.newContentKey();
      const keyId = hex(fresh.keyId);
      this.keys.set(keyId, fresh.key);
      for (const r of [...new Set([this.me, ...this.current(node)])].sort()) {
        records.push({ field: `w:${keyId}:${r}`, wrap: { key: fresh.key, reader: r } });
      }
    }
    if (was !== on) records.unshift({ field: `r:${key}`, on });
    if (!records.length) return false;
    await this.write([], null, records);
    return was !== on;
  }
}

class PrivateNode {
  constructor(space, soul) {
    this.space = space;
    this.graph = space.graph;
    this.soul = soul;
    this.author = space.author;
    this.keySoul = space.keysSoul;
    this.tier = 'private';
  }

  /** Write fields, encrypted to the space's readers and signed by the author (nested
   * objects become nodes of the same space); resolves to their state once acknowledged. */
  async put(fields) {
    this.graph._mustAuthor(this.author, this.soul);
    const values = flatten(this.soul, fields, []);
    for (const [soul] of values) {
      const parsed = priv.parseSoul(soul);
      if (parsed === null || parsed.keys || soul.includes('~') || soul.includes('#')) {
        // (a nested object makes <soul>/<field>: a field name may not leave the space)
        throw new GraphValueError(`not a node of a private space: ${soul.slice(0, 80)} (a private soul's path holds no '~' or '#')`);
      }
    }
    const plan = await this.space.plan(await this.space.keyNode());
    return this.space.write(values, plan, plan.records);
  }

  /** The fields this identity can read, in plaintext, or null for an unknown node;
   * NotAReader when it holds the key of none of them. */
  async get() {
    await Promise.all([this.graph.load(this.soul), this.graph.load(this.keySoul)]);
    const fields = this.graph.fields(this.soul).filter(([f, s, v]) => this.graph.verifies(this.soul, f, s, v));
    if (!fields.length) return null;
    const out = {};
    let unreadable = null;
    for (const [field, state, value] of fields) {
      try {
        out[field] = await this.space.open(this.soul, field, state, value);
      } catch (err) {
        if (!(err instanceof NotAReader)) throw err;
        unreadable = err;
      }
    }
    if (!Object.keys(out).length && unreadable) throw unreadable;
    return out;
  }

  /** One field in plaintext, or `fallback` when there is none; NotAReader when this
   * identity holds no key for it. */
  async getField(field, fallback = undefined) {
    await Promise.all([this.graph.load(this.soul), this.graph.load(this.keySoul)]);
    for (const [f, state, value] of this.graph.fields(this.soul)) {
      if (f === field && this.graph.verifies(this.soul, f, state, value)) return this.space.open(this.soul, f, state, value);
    }
    return fallback;
  }

  child(name) {
    return new PrivateNode(this.space, `${this.soul}/${name}`);
  }

  /** The readers' X25519 keys (hex, sorted; the author, who always reads, is not one). */
  async readers() {
    return this.space.current(await this.space.keyNode()).sort();
  }

  /** Let `reader` (an X25519 key: hex, bytes, or an identity) read the whole space;
   * false when it already could. Author only. */
  addReader(reader) {
    return this.space.setReader(reader, true);
  }

  /** Stop `reader` from reading what is written from now on; false when it was none. */
  removeReader(reader) {
    return this.space.setReader(reader, false);
  }

  /** `callback({soul, field, value, state})` with the plaintext of every later change this
   * identity can read; one that arrives before its key is delivered when the key does. */
  on(callback) {
    const waiting = new Map();
    const deliver = async ([field, state, value]) => {
      if (!this.graph.verifies(this.soul, field, state, value)) return;
      try {
        const plain = await this.space.open(this.soul, field, state, value);
        waiting.delete(field);
        callback({ soul: this.soul, field, value: plain, state });
      } catch (err) {
        if (err instanceof NotAReader) waiting.set(field, [field, state, value]);
      }
    };
    this.graph.load(this.soul);
    this.graph.load(this.keySoul);
    const data = this.graph.watch(this.soul, deliver);
    const keys = this.graph.watch(this.keySoul, ([field]) => {
      if (this.space.me === null || !field.endsWith(`:${this.space.me}`)) return;
      for (const [f, state, value] of [...waiting.values()]) {
        const now = this.graph.fields(this.soul).find(([name]) => name === f);
        if (now && now[1] === state) deliver([f, state, value]);
      }
    });
    return {
      off() {
        data.off();
        keys.off();
      },
    };
  }
}
