// bench/client.js, the client's side of a call replayed against a recorded server: its
// calls get their answers (each checked by the replay) and it times each round.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { replay } from '../bench/client.js';

test('the replayed client makes its calls against the recorded answers', { timeout: 60000 }, async () => {
  const rounds = [];
  const perCall = await replay(40, 2, { round: (r) => rounds.push(r) });
  assert.deepEqual(rounds, [0, 1]);
  assert.equal(perCall.length, 2);
  for (const us of perCall) assert.ok(Number.isFinite(us) && us > 0);
});
