// The WebSocket carrier's opening, with a WebSocket class of the test's own.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TimeoutError } from '../src/errors.js';
import { ed25519Signer } from '../src/identity.js';
import { connect } from '../src/websocket.js';

/** A WebSocket whose server took the TCP connection and never answers the upgrade. */
class NeverOpens extends EventTarget {
  static made = [];

  constructor(url, protocol) {
    super();
    this.url = url;
    this.protocol = '';
    this.closed = false;
    NeverOpens.made.push(this);
  }

  close() {
    this.closed = true;
  }
}

test('an upgrade never answered rejects at the handshake timeout, its socket closed', async () => {
  const started = Date.now();
  await assert.rejects(
    connect('ws://127.0.0.1:9/', {
      WebSocket: NeverOpens,
      signer: ed25519Signer(new Uint8Array(32)),
      handshakeTimeout: 200,
    }),
    (err) => err instanceof TimeoutError && /upgrade .* timed out/.test(err.message),
  );
  assert.ok(Date.now() - started < 5000);
  assert.equal(NeverOpens.made.length, 1);
  assert.ok(NeverOpens.made[0].closed);
});
