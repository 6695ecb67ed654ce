// Section 12's conformance transcripts (tests/golden/conformance_*.json), client side:
// with the transcript's fixed keys this client must send every one of the client's
// records byte for byte, and read the server's to the transcript's effect. (The lossy
// transcript is for datagram carriers; this client runs over in-order ones only.)

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fromHex, hex, utf8 } from '../src/bytes.js';
import { Connection } from '../src/connection.js';
import { CloseCode, ConnectionRefused, HandshakeError } from '../src/errors.js';
import { FrameType, decodeFrames, encodeFrames, frame } from '../src/frames.js';
import { ed25519Signer } from '../src/identity.js';
import { keyPair } from '../src/noise.js';
import { openRecord, sealRecord } from '../src/record.js';
import { RecordingCarrier, loadTranscript, settle } from './support.js';

/** Runs the client through a transcript; returns what the test checks afterwards. */
async function replay(name) {
  const t = loadTranscript(name);
  const carrier = new RecordingCarrier();
  let signer = ed25519Signer(fromHex(t.keys.client_ed25519_seed));
  if (t.steps.some((s) => s.actions.some((a) => a.do === 'corrupt_auth'))) {
    const honest = signer;
    signer = {
      address: honest.address,
      scheme: honest.scheme, // (an Ed25519 signer: the client offers version 1)
      async signPersonalMessage(message) {
        const proof = await honest.signPersonalMessage(message);
        proof[64] ^= 1; // the signature's last byte: the transcript's corrupted proof
        return proof;
      },
    };
  }
  const connection = new Connection(carrier, {
    signer,
    serverKey: t.pattern === 'IK' ? fromHex(t.public.server_static) : undefined,
    staticKey: keyPair(fromHex(t.keys.client_static_private)),
    ephemeralKey: keyPair(fromHex(t.keys.client_ephemeral_private)),
  });
  const opened = connection.open();
  opened.catch(() => {});
  const streams = new Map();
  let seen = 0;
  const expectSent = (step) => {
    const got = carrier.sent.slice(seen);
    assert.deepEqual(got, step.records.map((r) => r.hex), `${name}: the client's records at t=${step.now}`);
    seen = carrier.sent.length;
  };
  for (const [i, step] of t.steps.entries()) {
    if (step.side === 'server') {
      for (const r of step.records) connection._onRecord(fromHex(r.hex));
      await settle();
      continue;
    }
    if (i === 0) {
      await settle();
    } else {
      await settle();
      for (const action of step.actions) {
        if (action.do === 'open_stream') {
          const stream = await connection.openStream();
          assert.equal(stream.id, action.returns);
          streams.set(stream.id, stream);
        } else if (action.do === 'send') {
          const stream = streams.get(action.stream);
          const data = fromHex(action.data);
          if (action.fin) stream.end(data);
          else stream.write(data);
        } else if (action.do === 'close') {
          await connection.close(action.code, action.reason);
        }
      }
      await settle();
    }
    expectSent(step);
  }
  return { t, connection, carrier, opened, streams };
}

/** The server's records opened with the transcript's server -> client key. */
function serverFrames(t) {
  const key = fromHex(t.server_to_client);
  const out = [];
  for (const step of t.steps.filter((s) => s.side === 'server')) {
    for (const r of step.records.filter((x) => x.kind === 16)) {
      const plaintext = openRecord(key, fromHex(r.hex));
      assert.equal(hex(plaintext), r.plaintext);
      out.push(...decodeFrames(plaintext));
    }
  }
  return out;
}

describe('section 12 transcripts, client side', () => {
  test('IK: handshake, ping/pong on stream 0, close', async () => {
    const { t, connection, opened, streams } = await replay('ik');
    await opened;
    assert.equal(hex(connection.handshakeHash), t.handshake_hash);
    assert.equal(hex(connection.protection.sendKey), t.client_to_server);
    assert.equal(hex(connection.protection.receiveKey), t.server_to_client);
    assert.deepEqual(connection.peerParams, { v: 1, md: 8388608, msd: 4194304, ms: 128, it: 60000 });
    assert.equal(connection.peerMaxStreams, 129); // the server's MAX_STREAMS after stream 0 ended
    assert.equal(connection.closeInfo.code, CloseCode.NO_ERROR);
    assert.deepEqual(serverFrames(t).map((f) => f.type), [0x0c, 0x09, 0x07]); // ACCEPT, STREAM_FIN, MAX_STREAMS
    const reply = await streams.get(0).readAll();
    assert.equal(new TextDecoder().decode(reply), 'pong');
  });

  test('XX: handshake, AUTH, ping/pong, a server stream, close', async () => {
    const { t, connection, opened, streams } = await replay('xx');
    await opened;
    assert.equal(hex(connection.handshakeHash), t.handshake_hash);
    assert.equal(hex(connection.serverStaticKey), t.public.server_static);
    assert.equal(new TextDecoder().decode(await streams.get(0).readAll()), 'pong');
    assert.equal(connection.streams.get(1).id, 1); // the server opened stream 1
    assert.equal(connection.closeInfo.code, CloseCode.NO_ERROR);
  });

  test('IK refused: CLOSE 11 behind message 2, nothing sent back', async () => {
    const { connection, carrier, opened } = await replay('ik_refusal');
    await assert.rejects(opened, (err) => err instanceof ConnectionRefused && err.code === 11 && err.reason === 'not on the list');
    assert.equal(connection.closeInfo.code, CloseCode.REFUSED);
    assert.equal(carrier.sent.length, 1);
    assert.ok(carrier.closed);
  });

  test('XX with a failing proof: CLOSE 10', async () => {
    const { connection, opened } = await replay('xx_bad_proof');
    await assert.rejects(opened, (err) => err instanceof HandshakeError && /signature does not verify/.test(err.message));
    assert.equal(connection.closeInfo.code, CloseCode.HANDSHAKE_FAILED);
  });
});

describe('the client holds the server to the rules', () => {
  async function acceptedIK() {
    const t = loadTranscript('ik');
    const carrier = new RecordingCarrier();
    const connection = new Connection(carrier, {
      signer: ed25519Signer(fromHex(t.keys.client_ed25519_seed)),
      serverKey: fromHex(t.public.server_static),
      staticKey: keyPair(fromHex(t.keys.client_static_private)),
      ephemeralKey: keyPair(fromHex(t.keys.client_ephemeral_private)),
    });
    const opened = connection.open();
    await settle();
    for (const r of t.steps[1].records) connection._onRecord(fromHex(r.hex));
    await opened;
    return { t, carrier, connection };
  }

  function lastClose(carrier, connection) {
    const record = fromHex(carrier.sent.at(-1));
    const [f] = decodeFrames(openRecord(connection.protection.sendKey, record));
    return f;
  }

  test('a record replayed on an in-order carrier is REPLAY_DETECTED', async () => {
    const { t, carrier, connection } = await acceptedIK();
    connection._onRecord(fromHex(t.steps[1].records[1].hex)); // the ACCEPT's record again
    assert.equal(connection.closeInfo.code, CloseCode.REPLAY_DETECTED);
    assert.equal(lastClose(carrier, connection).a, CloseCode.REPLAY_DETECTED);
  });

  test('a forged record is DECRYPT_ERROR', async () => {
    const { t, connection } = await acceptedIK();
    const forged = fromHex(t.steps[3].records[0].hex);
    forged[20] ^= 1;
    connection._onRecord(forged);
    assert.equal(connection.closeInfo.code, CloseCode.DECRYPT_ERROR);
  });

  test('a handshake record after the keys is PROTOCOL_VIOLATION', async () => {
    const { t, connection } = await acceptedIK();
    connection._onRecord(fromHex(t.steps[1].records[0].hex));
    assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
  });

  /** A record from the server, sealed with the transcript's server -> client key after
   * the ACCEPT (counter 0). */
  function fromServer(t, counter, frames) {
    return sealRecord(fromHex(t.server_to_client), counter, encodeFrames(frames));
  }

  test('stream data past the stream window is FLOW_CONTROL_ERROR', async () => {
    const { t, connection } = await acceptedIK();
    connection._onRecord(fromServer(t, 1, [frame(FrameType.STREAM, { a: 0, b: 4194304, data: Uint8Array.of(1) })]));
    assert.equal(connection.closeInfo.code, CloseCode.FLOW_CONTROL_ERROR);
  });

  test('a gap in a stream on an in-order carrier is PROTOCOL_VIOLATION', async () => {
    const { t, connection } = await acceptedIK();
    connection._onRecord(fromServer(t, 1, [frame(FrameType.STREAM, { a: 0, b: 5, data: Uint8Array.of(1) })]));
    assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
  });

  test('a client stream never opened, or a server stream past the limit, is PROTOCOL_VIOLATION', async () => {
    let { t, connection } = await acceptedIK();
    connection._onRecord(fromServer(t, 1, [frame(FrameType.STREAM, { a: 2, b: 0 })]));
    assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
    ({ t, connection } = await acceptedIK());
    connection._onRecord(fromServer(t, 1, [frame(FrameType.STREAM, { a: 2 * 128 + 1, b: 0 })]));
    assert.equal(connection.closeInfo.code, CloseCode.PROTOCOL_VIOLATION);
  });

  test('a server stream opens the lower ones; each is accepted in order', async () => {
    const { t, connection } = await acceptedIK();
    connection._onRecord(fromServer(t, 1, [frame(FrameType.STREAM_FIN, { a: 5, b: 0, data: utf8('five') })]));
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await connection.acceptStream()).id);
    assert.deepEqual(ids, [1, 3, 5]);
    assert.equal(new TextDecoder().decode(await connection.streams.get(5).readAll()), 'five');
  });

  test('a write is cut into records of at most 16384 plaintext bytes, within credit', async () => {
    const { carrier, connection } = await acceptedIK();
    const stream = await connection.openStream();
    const before = carrier.sent.length;
    await stream.end(new Uint8Array(40000).fill(3));
    const key = connection.protection.sendKey;
    const frames = carrier.sent.slice(before).map((r) => {
      const plaintext = openRecord(key, fromHex(r));
      assert.ok(plaintext.length <= 16384);
      return decodeFrames(plaintext);
    }).flat();
    assert.deepEqual(frames.map((f) => f.type), [8, 8, 9]);
    assert.equal(frames.reduce((n, f) => n + f.data.length, 0), 40000);
    assert.deepEqual(frames.map((f) => f.b), [0, frames[0].data.length, frames[0].data.length * 2]);
  });

  test('a CLOSE from the server ends streams: stream 0 cleanly on NO_ERROR', async () => {
    const { t, connection } = await acceptedIK();
    const stream = await connection.openStream();
    connection._onRecord(fromServer(t, 1, [frame(FrameType.STREAM, { a: 0, b: 0, data: utf8('part') })]));
    connection._onRecord(fromServer(t, 2, [frame(FrameType.CLOSE, { a: 0, data: utf8('done') })]));
    assert.equal(new TextDecoder().decode(await stream.readAll()), 'part');
    assert.deepEqual({ ...(await connection.closed), error: undefined }, { code: 0, reason: 'done', byPeer: true, error: undefined });
  });

  test('a wrong server key fails the IK handshake with nothing sent', async () => {
    const t = loadTranscript('ik');
    const carrier = new RecordingCarrier();
    const wrong = fromHex(t.public.server_static);
    wrong[0] ^= 1;
    const connection = new Connection(carrier, { signer: ed25519Signer(fromHex(t.keys.client_ed25519_seed)), serverKey: wrong });
    const opened = connection.open();
    await settle();
    connection._onRecord(fromHex(t.steps[1].records[0].hex));
    await assert.rejects(opened, HandshakeError);
    assert.equal(carrier.sent.length, 1);
    assert.ok(carrier.closed);
  });

  test('a signer whose signature is no Sui signature is refused before anything is sent', async () => {
    for (const [bytes, why] of [
      [new Uint8Array(98), /Ed25519 signature of 98 bytes, not 97/],
      [Uint8Array.of(4, ...new Uint8Array(97)), /not a Sui signature/],
      [new Uint8Array(0), /not a Sui signature/],
      [Uint8Array.of(1, ...new Uint8Array(3840)), /at most 3840/],
    ]) {
      const carrier = new RecordingCarrier();
      const connection = new Connection(carrier, {
        signer: { address: '0x1', signPersonalMessage: async () => bytes },
        serverKey: new Uint8Array(32).fill(9),
      });
      await assert.rejects(connection.open(), why);
      assert.equal(carrier.sent.length, 0);
    }
  });

  test('a base64 wallet signature is taken', async () => {
    const seed = new Uint8Array(32).fill(7);
    const local = ed25519Signer(seed);
    const wallet = {
      address: local.address,
      async signPersonalMessage(message) {
        return { bytes: '', signature: Buffer.from(await local.signPersonalMessage(message)).toString('base64') };
      },
    };
    const carrier = new RecordingCarrier();
    const connection = new Connection(carrier, { signer: wallet, serverKey: new Uint8Array(32).fill(9) });
    connection.open().catch(() => {});
    await settle();
    assert.equal(carrier.sent.length, 1);
    connection.close();
    assert.ok(utf8('x'));
  });
});
