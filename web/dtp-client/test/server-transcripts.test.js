// Section 12's conformance transcripts (tests/golden/conformance_*.json), server side:
// with the transcript's fixed keys the responder (server.js) must send every one of the
// server's records byte for byte, and read the client's to the transcript's effect. With
// transcripts.test.js (the client side) both directions of each transcript are vectors.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fromHex, hex, utf8 } from '../src/bytes.js';
import { CloseCode, ConnectionClosed, ConnectionRefused, HandshakeError } from '../src/errors.js';
import { FrameType, decodeFrames, encodeFrames, frame } from '../src/frames.js';
import { keyPair } from '../src/noise.js';
import { openRecord, sealRecord } from '../src/record.js';
import { ServerConnection } from '../src/server.js';
import { RecordingCarrier, loadTranscript, settle } from './support.js';


/** Runs the server through a transcript; returns what the test checks afterwards. */
async function replay(name, { readBeforeReply = true } = {}) {
  const t = loadTranscript(name);
  const carrier = new RecordingCarrier();
  const decisions = [];
  const verdictOf = () => {
    for (const step of t.steps) {
      for (const a of step.actions) {
        if (a.do === 'accept') return true;
        if (a.do === 'refuse') return { code: a.code, reason: a.reason };
      }
    }
    return true;
  };
  const connection = new ServerConnection(carrier, {
    staticKey: fromHex(t.keys.server_static_private),
    ephemeralKey: keyPair(fromHex(t.keys.server_ephemeral_private)),
    decide: (who) => {
      decisions.push(who);
      return verdictOf();
    },
  });
  const accepted = connection.accept();
  accepted.catch(() => {});
  const streams = new Map();
  let seen = 0;
  const expectSent = (step) => {
    assert.deepEqual(carrier.sent.slice(seen), step.records.map((r) => r.hex), `${name}: the server's records at t=${step.now}`);
    seen = carrier.sent.length;
  };
  for (const step of t.steps) {
    if (step.side === 'client') {
      for (const r of step.records) connection._onRecord(fromHex(r.hex));
      await settle();
      continue;
    }
    for (const action of step.actions) {
      if (action.do === 'send') {
        let stream = streams.get(action.stream);
        if (!stream) {
          stream = await connection.acceptStream();
          assert.equal(stream.id, action.stream);
          streams.set(stream.id, stream);
          // the IK transcript's server reads the request before it answers (then the
          // stream is done with: MAX_STREAMS 129); the XX one answers first
          if (readBeforeReply && t.pattern === 'IK') stream.request = await stream.readAll();
        }
        const data = fromHex(action.data);
        if (action.fin) stream.end(data);
        else stream.write(data);
      } else if (action.do === 'open_stream') {
        const stream = await connection.openStream();
        assert.equal(stream.id, action.returns);
        streams.set(stream.id, stream);
      }
    }
    await settle();
    expectSent(step);
  }
  return { t, connection, carrier, accepted, streams, decisions };
}

/** The client's records opened with the transcript's client -> server key. */
function clientFrames(t) {
  const key = fromHex(t.client_to_server);
  const out = [];
  for (const step of t.steps.filter((s) => s.side === 'client')) {
    for (const r of step.records.filter((x) => x.kind === 16)) out.push(...decodeFrames(openRecord(key, fromHex(r.hex))));
  }
  return out;
}

describe('section 12 transcripts, server side', () => {
  test('IK: message 2 and the ACCEPT, pong on stream 0, MAX_STREAMS, the client\'s close', async () => {
    const { t, connection, accepted, streams, decisions } = await replay('ik');
    await accepted;
    assert.equal(hex(connection.handshakeHash), t.handshake_hash);
    assert.equal(hex(connection.protection.receiveKey), t.client_to_server);
    assert.equal(hex(connection.protection.sendKey), t.server_to_client);
    assert.equal(hex(connection.clientStaticKey), t.public.client_static);
    assert.deepEqual(connection.clientParams, { v: 1, md: 8388608, msd: 4194304, ms: 128, it: 60000, auth: fromHex(t.auth.proof) });
    assert.equal(decisions.length, 1);
    assert.equal(decisions[0].address, t.public.client_sui_address);
    assert.equal(decisions[0].pattern, 'IK');
    assert.equal(new TextDecoder().decode(streams.get(0).request), 'ping');
    // the client's first stream carried its ping: one request (docs/escrow.md 6.1)
    assert.equal(connection.usage.requests, 1);
    assert.deepEqual(connection.closeInfo, { code: 0, reason: 'bye', byPeer: true, error: connection.closeInfo.error });
    assert.deepEqual(clientFrames(t).map((f) => f.type), [FrameType.STREAM_FIN, FrameType.CLOSE]);
  });

  test('XX: message 2, the AUTH checked, ACCEPT, pong, a server stream, the client\'s close', async () => {
    const { t, connection, accepted, streams, decisions } = await replay('xx');
    await accepted;
    assert.equal(hex(connection.handshakeHash), t.handshake_hash);
    assert.equal(hex(connection.clientStaticKey), t.public.client_static);
    assert.equal(decisions[0].address, t.public.client_sui_address);
    assert.equal(decisions[0].pattern, 'XX');
    // the client's stream 0, sent behind its AUTH before the verdict, was held until the ACCEPT
    assert.equal(new TextDecoder().decode(await streams.get(0).readAll()), 'ping');
    assert.equal(streams.get(1).id, 1);
    assert.equal(connection.closeInfo.code, CloseCode.NO_ERROR);
    assert.ok(connection.closeInfo.byPeer);
  });

  test('IK refused: message 2, then CLOSE 11 with the reason', async () => {
    const { connection, accepted, decisions } = await replay('ik_refusal');
    await assert.rejects(accepted, (err) => err instanceof ConnectionRefused && err.code === 11 && err.reason === 'not on the list');
    assert.equal(decisions.length, 1);
    assert.equal(connection.closeInfo.code, CloseCode.REFUSED);
  });

  test('XX with a failing proof: CLOSE 10, never a verdict', async () => {
    const { connection, accepted, decisions, carrier } = await replay('xx_bad_proof');
    await assert.rejects(accepted, (err) => err instanceof HandshakeError && /signature does not verify/.test(err.message));
    assert.equal(decisions.length, 0);
    assert.equal(connection.closeInfo.code, CloseCode.HANDSHAKE_FAILED);
    assert.ok(carrier.closed);
  });
});

describe('the server holds the client to the rules', () => {
  const ik = () => loadTranscript('ik');

  function server(t, options = {}) {
    const carrier = new RecordingCarrier();
    const connection = new ServerConnection(carrier, {
      staticKey: fromHex(t.keys.server_static_private),
      ephemeralKey: keyPair(fromHex(t.keys.server_ephemeral_private)),
      ...options,
    });
    const accepted = connection.accept();
    accepted.catch(() => {});
    return { carrier, connection, accepted };
  }

  function fromClient(t, counter, frames) {
    return sealRecord(fromHex(t.client_to_server), counter, encodeFrames(frames));
  }

  function lastFrame(carrier, connection) {
    return decodeFrames(openRecord(connection.protection.sendKey, fromHex(carrier.sent.at(-1))))[0];
  }

  test('a damaged message 1 gets no reply and closes the carrier', async () => {
    const t = ik();
    const { carrier, connection, accepted } = server(t);
    const damaged = fromHex(t.steps[0].records[0].hex);
    damaged[60] ^= 1;
    connection._onRecord(damaged);
    await assert.rejects(accepted, HandshakeError);
    assert.equal(carrier.sent.length, 0);
    assert.ok(carrier.closed);
  });

  test('an unknown pattern byte, a DATA record first, or HS_RESP first fail the handshake silently', async () => {
    const t = ik();
    for (const mutate of [
      (r) => { r[12] = 3; },
      (r) => { r[0] = 2; },
    ]) {
      const { carrier, connection, accepted } = server(t);
      const record = fromHex(t.steps[0].records[0].hex);
      mutate(record);
      connection._onRecord(record);
      await assert.rejects(accepted, HandshakeError);
      assert.equal(carrier.sent.length, 0);
    }
    const { carrier, connection, accepted } = server(t);
    connection._onRecord(fromClient(t, 0, [frame(FrameType.PING)]));
    await assert.rejects(accepted, HandshakeError);
    assert.equal(carrier.sent.length, 0);
  });

  test('a decide hook that refuses without a code refuses with REFUSED; one that throws is INTERNAL_ERROR', async () => {
    const t = ik();
    let { connection, accepted } = server(t, { decide: () => ({ reason: 'no' }) });
    connection._onRecord(fromHex(t.steps[0].records[0].hex));
    await assert.rejects(accepted, (err) => err instanceof ConnectionRefused && err.code === 11 && err.reason === 'no');
    ({ connection, accepted } = server(t, { decide: () => { throw new Error('boom'); } }));
    connection._onRecord(fromHex(t.steps[0].records[0].hex));
    await assert.rejects(accepted, ConnectionClosed);
    assert.equal(connection.closeInfo.code, CloseCode.INTERNAL_ERROR);
  });

  test('stream data sent before the verdict is held until the ACCEPT', async () => {
    const t = ik();
    let release;
    const decided = new Promise((resolve) => { release = resolve; });
    const { connection, accepted } = server(t, { decide: () => decided });
    connection._onRecord(fromHex(t.steps[0].records[0].hex));
    await settle();
    connection._onRecord(fromClient(t, 0, [frame(FrameType.STREAM_FIN, { a: 2, b: 0, data: utf8('early') })]));
    await settle();
    assert.equal(connection.streams.size, 0); // held, not delivered
    release(true);
    await accepted;
    const first = await connection.acceptStream();
    const second = await connection.acceptStream();
    assert.deepEqual([first.id, second.id], [0, 2]); // the ACCEPT opened 0, the held frame 2
    assert.equal(new TextDecoder().decode(await second.readAll()), 'early');
    // as a paid server meters it: stream 2 carried a request, stream 0 (empty) none
    assert.equal(connection.usage.requests, 1);
    connection._onRecord(fromClient(t, 1, [frame(FrameType.STREAM, { a: 0, b: 0, data: utf8('late') })]));
    assert.equal(connection.usage.requests, 2);
  });

  test('what the client sent before a refusal never reaches the application', async () => {
    const t = ik();
    let release;
    const decided = new Promise((resolve) => { release = resolve; });
    const { connection, accepted } = server(t, { decide: () => decided });
    const datagrams = [];
    connection.ondatagram = (d) => datagrams.push(d);
    connection._onRecord(fromHex(t.steps[0].records[0].hex));
    await settle();
    connection._onRecord(fromClient(t, 0, [frame(FrameType.STREAM_FIN, { a: 2, b: 0, data: utf8('early') }),
      frame(FrameType.DATAGRAM, { data: utf8('dg') })]));
    release({ code: 0x1403, reason: 'firewall' });
    await assert.rejects(accepted, (err) => err instanceof ConnectionRefused && err.code === 0x1403);
    assert.equal(connection.streams.size, 0);
    assert.deepEqual(datagrams, []);
  });

  test('more held before the verdict than the connection window is PROTOCOL_VIOLATION; datagrams are dropped', async () => {
    const t = ik();
    const { connection } = server(t, { decide: () => new Promise(() => {}), params: { md: 1024 } });
    connection._onRecord(fromHex(t.steps[0].records[0].hex));
    await settle();
    connection._onRecord(fromClient(t, 0, [frame(FrameType.DATAGRAM, { data: new Uint8Array(2000) })]));
    assert.equal(connection.state, 'awaiting-verdict'); // the datagram was dropped
    connection._onRecord(fromClient(t, 1, [frame(FrameType.CONTROL, { a: 16, data: new Uint8Array(2000) })]));
    assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
  });

  test('an AUTH in IK, or an ACCEPT from the client, is PROTOCOL_VIOLATION', async () => {
    const t = ik();
    for (const kind of [1, 2]) {
      const { carrier, connection } = server(t);
      connection._onRecord(fromHex(t.steps[0].records[0].hex));
      await settle();
      connection._onRecord(fromClient(t, 0, [frame(FrameType.CONTROL, { a: kind, data: new Uint8Array(kind === 1 ? 97 : 0) })]));
      assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
      assert.equal(lastFrame(carrier, connection).a, CloseCode.PROTOCOL_VIOLATION);
    }
  });

  test('XX: a stream frame ahead of the AUTH is PROTOCOL_VIOLATION', async () => {
    const t = loadTranscript('xx');
    const { connection, accepted } = server(t);
    connection._onRecord(fromHex(t.steps[0].records[0].hex));
    await settle();
    connection._onRecord(fromHex(t.steps[2].records[0].hex)); // HS_FINAL
    connection._onRecord(fromClient(t, 0, [frame(FrameType.STREAM, { a: 0, b: 0, data: utf8('x') })]));
    await assert.rejects(accepted);
    assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
  });

  test('a client stream past the server\'s limit, or a server stream never opened, is PROTOCOL_VIOLATION', async () => {
    const t = ik();
    for (const id of [2 * 128, 3]) {
      const { connection, accepted } = server(t);
      connection._onRecord(fromHex(t.steps[0].records[0].hex));
      await accepted;
      connection._onRecord(fromClient(t, 0, [frame(FrameType.STREAM, { a: id, b: 0 })]));
      assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
    }
  });

  test('closing before the verdict sends HANDSHAKE_FAILED', async () => {
    const t = ik();
    const { carrier, connection, accepted } = server(t, { decide: () => new Promise(() => {}) });
    connection._onRecord(fromHex(t.steps[0].records[0].hex));
    await settle();
    await connection.close();
    await assert.rejects(accepted);
    assert.equal(lastFrame(carrier, connection).a, CloseCode.HANDSHAKE_FAILED);
  });
});
