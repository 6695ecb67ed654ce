// Opening the client's streams (docs/protocol.md section 10.1): a stream goes on the wire
// with its first frame -- what is written, or an empty STREAM frame when it is read
// before anything was written -- and the streams the client is done with are let go.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fromHex, utf8 } from '../src/bytes.js';
import { FrameType, encodeFrames, frame } from '../src/frames.js';
import { sealRecord } from '../src/record.js';
import { acceptedIK, flush, sentFrames } from './accepted.js';

/** A record from the transcript's server: its `n`-th DATA record (the ACCEPT was 0). */
function fromServer(t, n, frames) {
  return sealRecord(fromHex(t.server_to_client), n, encodeFrames(frames));
}

describe('opening streams', () => {
  test('a stream written after other awaits goes out as its data alone', async () => {
    const { t, connection, carrier } = await acceptedIK();
    await connection.openStream(); // stream 0, which the ACCEPT opened
    const stream = await connection.openStream();
    const before = carrier.sent.length;
    await flush(); // (other work: no empty STREAM frame goes out meanwhile)
    assert.equal(carrier.sent.length, before);
    await stream.end(utf8('call'));
    assert.deepEqual(sentFrames(t, carrier, before), [[[FrameType.STREAM_FIN, 2, 0]]]);
  });

  test('a stream read before anything was written is announced by an empty STREAM frame', async () => {
    const { t, connection, carrier } = await acceptedIK();
    await connection.openStream();
    const stream = await connection.openStream();
    const before = carrier.sent.length;
    const reading = stream.read();
    assert.deepEqual(sentFrames(t, carrier, before), [[[FrameType.STREAM, 2, 0]]]);
    stream.read(); // (once)
    assert.equal(carrier.sent.length, before + 1);
    connection._onRecord(fromServer(t, 1, [frame(FrameType.STREAM_FIN, { a: 2, b: 0, data: utf8('hi') })]));
    assert.equal(new TextDecoder().decode(await reading), 'hi');
  });

  test('the first stream is a request only once the client sends data on it (docs/escrow.md 6.1)', async () => {
    const { t, connection } = await acceptedIK();
    assert.equal(connection.usage.requests, 0); // (stream 0, which the ACCEPT opened, carries nothing yet)
    const first = await connection.openStream(); // held open, as a page holds it
    for (let i = 0; i < 3; i++) {
      const stream = await connection.openStream();
      await stream.end(utf8('call'));
      await flush();
      assert.equal(connection.usage.requests, i + 1);
      connection._onRecord(fromServer(t, 1 + i, [frame(FrameType.STREAM_FIN, { a: stream.id, b: 0, data: utf8('answer') })]));
      await stream.readAll();
    }
    await first.end(); // (ended empty: still no request)
    await flush();
    assert.equal(connection.usage.requests, 3);
    // one that carries a call counts, as any other stream
    const { connection: other } = await acceptedIK();
    await (await other.openStream()).write(utf8('ping'));
    await flush();
    assert.equal(other.usage.requests, 1);
  });

  test('the client forgets its streams once they ended both ways', async () => {
    const { t, connection } = await acceptedIK();
    await connection.openStream();
    for (let i = 0; i < 3; i++) {
      const stream = await connection.openStream();
      await stream.end(utf8('call'));
      connection._onRecord(fromServer(t, 1 + i, [frame(FrameType.STREAM_FIN, { a: stream.id, b: 0, data: utf8('answer') })]));
      assert.equal(new TextDecoder().decode(await stream.readAll()), 'answer');
      assert.equal(connection.streams.has(stream.id), false);
    }
    assert.deepEqual([...connection.streams.keys()], [0]);
    assert.equal(connection.sending.size, 0);
    // what comes late for a forgotten stream is let go, not a violation
    connection._onRecord(fromServer(t, 4, [frame(FrameType.MAX_STREAM_DATA, { a: 2, b: 1 << 20 })]));
    assert.equal(connection.state, 'open');
    // a stream never opened still is
    connection._onRecord(fromServer(t, 5, [frame(FrameType.MAX_STREAM_DATA, { a: 40, b: 1 })]));
    assert.equal(connection.state, 'closed');
  });
});
