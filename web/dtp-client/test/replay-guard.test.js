// The server's replay guard (src/replay-guard.js; docs/protocol.md section 8, "Replayed
// IK first messages"): a recorded IK message 1 sent again is refused with
// HANDSHAKE_FAILED before the decide hook runs, also while the original still waits
// for its verdict; a client's next connect (a fresh ephemeral key) is served; XX leaves
// the guard alone; the pools keep accepted keys apart from the others. A client and a
// ServerConnection of this package talk over an in-memory carrier; the replay is the
// recorded HS_INIT fed to another ServerConnection sharing the guard.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fromUtf8, hex, utf8 } from '../src/bytes.js';
import { Connection } from '../src/connection.js';
import { CloseCode, HandshakeError } from '../src/errors.js';
import { ed25519Signer } from '../src/identity.js';
import { keyPair } from '../src/noise.js';
import { ReplayGuard } from '../src/replay-guard.js';
import { ServerConnection } from '../src/server.js';
import { RecordingCarrier, settle } from './support.js';

const SERVER = keyPair(new Uint8Array(32).fill(7));
const WALLET = ed25519Signer(new Uint8Array(32).fill(1));

/** One end of an in-memory carrier: each record reaches the other end a turn later. */
class PairCarrier {
  constructor(record = null) {
    this.peer = null;
    this.connection = null;
    this.closed = false;
    this.record = record; // (records sent, kept when given a list)
  }

  send(bytes) {
    const copy = bytes.slice();
    this.record?.push(copy);
    setImmediate(() => this.peer.connection?._onRecord(copy));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    setImmediate(() => this.peer.connection?._onCarrierClosed('closed'));
  }
}

/** A client connected to a server sharing `guard`; resolves to what the test needs. */
async function connected(guard, { xx = false, decide } = {}) {
  const sent = [];
  const a = new PairCarrier(sent);
  const b = new PairCarrier();
  a.peer = b;
  b.peer = a;
  const decisions = [];
  const server = new ServerConnection(b, {
    staticKey: SERVER,
    replayGuard: guard,
    decide: (who) => {
      decisions.push(who.address);
      return decide ? decide(who) : true;
    },
  });
  b.connection = server;
  const client = new Connection(a, { signer: WALLET, ...(xx ? {} : { serverKey: SERVER.publicKey }) });
  a.connection = client;
  const accepted = server.accept();
  const opened = client.open();
  return { client, server, accepted, opened, firstRecord: () => sent[0], decisions };
}

/** Feeds `record` (a recorded HS_INIT) to a fresh server sharing `guard`. */
function replayTo(guard, record) {
  const carrier = new RecordingCarrier();
  const decisions = [];
  const server = new ServerConnection(carrier, {
    staticKey: SERVER,
    replayGuard: guard,
    decide: (who) => {
      decisions.push(who.address);
      return true;
    },
  });
  const accepted = server.accept();
  server._onRecord(record);
  return { server, carrier, accepted, decisions };
}

async function echoOnce(client, server) {
  const stream = await client.openStream();
  await stream.end(utf8('ping'));
  const served = await server.acceptStream();
  const got = await served.readAll();
  await served.end(got);
  return fromUtf8(await stream.readAll());
}

describe('the server refuses a replayed IK first message', () => {
  test('after the original was served, before decide runs, and nothing is sent to the replayer', async () => {
    const guard = new ReplayGuard();
    const first = await connected(guard);
    await Promise.all([first.accepted, first.opened]);
    assert.equal(await echoOnce(first.client, first.server), 'ping');
    const recorded = first.firstRecord();
    await first.client.close();

    const replay = replayTo(guard, recorded);
    await assert.rejects(replay.accepted, (err) => err instanceof HandshakeError && err.code === CloseCode.HANDSHAKE_FAILED
      && /replayed/.test(err.message));
    assert.deepEqual(replay.decisions, []); // refused before the decide hook
    assert.deepEqual(replay.carrier.sent, []); // no message 2: the replayer learns nothing
    assert.equal(replay.carrier.closed, true);
    assert.equal(guard.refused, 1);

    // the real client connects again: a fresh ephemeral key, served
    const again = await connected(guard);
    await Promise.all([again.accepted, again.opened]);
    assert.notEqual(hex(again.firstRecord()), hex(recorded));
    assert.equal(await echoOnce(again.client, again.server), 'ping');
    assert.deepEqual(again.decisions, [WALLET.address]);
    await again.client.close();
    assert.equal(guard.refused, 1);
  });

  test('while the original still waits for its verdict', async () => {
    const guard = new ReplayGuard();
    let release;
    const pending = new Promise((resolve) => {
      release = resolve;
    });
    const first = await connected(guard, { decide: () => pending });
    await settle();
    assert.equal(first.decisions.length, 1); // deciding now
    const replay = replayTo(guard, first.firstRecord());
    await assert.rejects(replay.accepted, HandshakeError);
    assert.deepEqual(replay.decisions, []);
    release(true);
    await Promise.all([first.accepted, first.opened]);
    assert.equal(await echoOnce(first.client, first.server), 'ping');
    await first.client.close();
    assert.equal(guard.refused, 1);
    // accepted: its key is among the accepted ones now, and its replay still refused
    assert.equal(guard._accepted.size, 1);
    await assert.rejects(replayTo(guard, first.firstRecord()).accepted, HandshakeError);
    assert.equal(guard.refused, 2);
  });

  test('a server without a guard serves the replay up to its verdict (what the guard stops)', async () => {
    const first = await connected(null);
    await Promise.all([first.accepted, first.opened]);
    await first.client.close();
    const replay = replayTo(null, first.firstRecord());
    await settle();
    assert.deepEqual(replay.decisions, [WALLET.address]); // authenticated the client again
    assert.equal(replay.carrier.sent.length >= 1, true); // and answered
    replay.accepted.catch(() => {});
    await replay.server.close();
  });

  test('XX leaves the guard alone', async () => {
    const guard = new ReplayGuard();
    const first = await connected(guard, { xx: true });
    await Promise.all([first.accepted, first.opened]);
    assert.equal(await echoOnce(first.client, first.server), 'ping');
    await first.client.close();
    assert.equal(guard.size, 0);
    // its message 1 sent again is a new handshake the replayer cannot finish: no AUTH
    // comes, and the handshake times out (here: the server is closed)
    const replay = replayTo(guard, first.firstRecord());
    await settle();
    assert.deepEqual(replay.decisions, []);
    assert.equal(guard.refused, 0);
    replay.accepted.catch(() => {});
    await replay.server.close();
  });

  test('a server refuses a guard of another kind', () => {
    assert.throws(() => new ServerConnection(new RecordingCarrier(), { staticKey: SERVER, replayGuard: new Set() }), TypeError);
  });
});

describe('the guard\'s pools', () => {
  const key = (n) => {
    const k = new Uint8Array(32);
    new DataView(k.buffer).setUint32(0, n);
    return k;
  };

  test('a key seen is refused; the oldest is forgotten beyond the capacity', () => {
    const guard = new ReplayGuard(3);
    for (let n = 0; n < 3; n++) assert.equal(guard.firstSight(key(n)), true);
    assert.equal(guard.firstSight(key(1)), false);
    assert.equal(guard.firstSight(hex(key(2))), false); // (hex names the same key)
    assert.equal(guard.firstSight(key(3)), true); // pushes key 0 out
    assert.equal(guard.firstSight(key(0)), true);
    assert.equal(guard.refused, 2);
    assert.equal(guard.size, 3);
  });

  test('keys of accepted connections are pushed out only by accepted ones', () => {
    const guard = new ReplayGuard(2);
    guard.accept(key(100));
    for (let n = 0; n < 10; n++) guard.firstSight(key(n)); // throw-away identities
    assert.equal(guard.firstSight(key(100)), false);
    guard.accept(key(101));
    guard.accept(key(102));
    assert.equal(guard.firstSight(key(100)), true); // (two accepted ones later)
  });

  test('a key under decision survives a flood, and settles into its verdict\'s pool', () => {
    const guard = new ReplayGuard(2);
    const deciding = { state: 'awaiting-verdict' };
    assert.equal(guard.firstSight(key(7), deciding), true);
    for (let n = 0; n < 20; n++) guard.firstSight(key(n + 1000), { state: 'closed' });
    assert.equal(guard.firstSight(key(7)), false);
    assert.equal(guard._deciding.size <= 3, true); // (drains as keys come in)
    deciding.state = 'open';
    for (let n = 0; n < 4; n++) guard.firstSight(key(n + 2000), { state: 'closed' });
    assert.equal(guard._accepted.has(hex(key(7))), true);
  });

  test('a capacity below 1 is refused', () => {
    assert.throws(() => new ReplayGuard(0), RangeError);
    assert.throws(() => new ReplayGuard(1.5), RangeError);
    assert.throws(() => new ReplayGuard(Number.NaN), RangeError);
  });
});
