// An IK connection accepted by the section 12 transcript's server, over a recording
// carrier, for the tests that drive a connection past its handshake.

import { mock } from 'node:test';
import { fromHex } from '../src/bytes.js';
import { Connection } from '../src/connection.js';
import { decodeFrames } from '../src/frames.js';
import { ed25519Signer } from '../src/identity.js';
import { keyPair } from '../src/noise.js';
import { openRecord } from '../src/record.js';
import { RecordingCarrier, loadTranscript } from './support.js';

/** Lets promises and microtasks run (setImmediate: node's mock clock leaves it alone). */
export async function flush(rounds = 5) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** The connection, accepted; `mockClock`: on node's mock clock (setTimeout and Date) from
 * 0, which the caller resets. */
export async function acceptedIK({ mockClock = false } = {}) {
  if (mockClock) mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  const t = loadTranscript('ik');
  const carrier = new RecordingCarrier();
  const connection = new Connection(carrier, {
    signer: ed25519Signer(fromHex(t.keys.client_ed25519_seed)),
    serverKey: fromHex(t.public.server_static),
    staticKey: keyPair(fromHex(t.keys.client_static_private)),
    ephemeralKey: keyPair(fromHex(t.keys.client_ephemeral_private)),
  });
  const opened = connection.open();
  await flush();
  for (const r of t.steps[1].records) connection._onRecord(fromHex(r.hex));
  await opened;
  return { t, connection, carrier };
}

/** The frames (type, a, b) of each record the client sent from index `from` on. */
export function sentFrames(t, carrier, from = 0) {
  const key = fromHex(t.client_to_server);
  return carrier.sent.slice(from).map((r) => decodeFrames(openRecord(key, fromHex(r))).map((f) => [f.type, Number(f.a), Number(f.b)]));
}
