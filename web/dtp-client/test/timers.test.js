// The keepalive and the idle timeout (docs/protocol.md sections 8.2 and 11): deadlines
// that each record sent or received moves, checked by one timer that re-arms itself for
// what is left. Run on node's mock clock, over the IK transcript's handshake.

import assert from 'node:assert/strict';
import { afterEach, describe, mock, test } from 'node:test';
import { fromHex, hex, utf8 } from '../src/bytes.js';
import { CloseCode } from '../src/errors.js';
import { FrameType, decodeFrames } from '../src/frames.js';
import { openRecord } from '../src/record.js';
import { acceptedIK, sentFrames as framesOf } from './accepted.js';
import { loadTranscript } from './support.js';

const KEEPALIVE_MS = 15000; // the server's `it` is 60000: a PING after 15 s without a record

const accepted = () => acceptedIK({ mockClock: true });

/** The frame types of the records the client sent from index `from` on. */
function sentFrames(t, carrier, from) {
  return framesOf(t, carrier, from).map((record) => record.map(([type]) => type));
}

describe('keepalive and idle timeout', () => {
  afterEach(() => mock.timers.reset());

  test('a PING goes out once nothing was sent for the keepalive interval, not before', async () => {
    const { t, connection, carrier } = await accepted();
    const before = carrier.sent.length;
    mock.timers.tick(KEEPALIVE_MS - 5000);
    connection.sendDatagram(utf8('x')); // a record sent: the deadline moves 15 s on
    mock.timers.tick(6000); // past the first deadline
    assert.deepEqual(sentFrames(t, carrier, before), [[FrameType.DATAGRAM]]);
    mock.timers.tick(KEEPALIVE_MS - 6000);
    assert.deepEqual(sentFrames(t, carrier, before), [[FrameType.DATAGRAM], [FrameType.PING]]);
    mock.timers.tick(KEEPALIVE_MS); // and again, the PING having moved it
    assert.deepEqual(sentFrames(t, carrier, before).at(-1), [FrameType.PING]);
    assert.equal(connection.state, 'open');
    connection._end(new Error('done'), { sendClose: false });
  });

  test('the idle timeout ends the connection silently; a record received moves it', async () => {
    const { connection, carrier } = await accepted();
    const idle = connection.localParams.it;
    assert.ok(idle > 2 * KEEPALIVE_MS);
    const sent = carrier.sent.length;
    mock.timers.tick(idle / 2);
    connection._armIdle(); // what each record received does (_onRecord)
    mock.timers.tick(idle / 2 + 1000); // past the first deadline
    assert.equal(connection.state, 'open');
    mock.timers.tick(idle / 2);
    assert.equal(connection.state, 'closed');
    assert.equal(connection.closeInfo.code, CloseCode.IDLE_TIMEOUT);
    assert.ok(carrier.closed);
    // no CLOSE record on an in-order carrier (section 11); the keepalive PINGs are all
    // that went out meanwhile
    const key = fromHex(loadTranscript('ik').client_to_server);
    for (const r of carrier.sent.slice(sent)) {
      const types = decodeFrames(openRecord(key, fromHex(r))).map((f) => f.type);
      assert.deepEqual(types, [FrameType.PING], hex(fromHex(r)));
    }
  });
});
