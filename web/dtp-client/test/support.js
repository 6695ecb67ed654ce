// What the tests share: the repository's docs/protocol.md vectors and section 12's
// transcripts (tests/golden/conformance_*.json).

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Every ```dtp-vector block of docs/protocol.md, as parsed JSON. */
export function loadVectors(kind) {
  const text = readFileSync(join(ROOT, 'docs', 'protocol.md'), 'utf8');
  const out = [];
  for (const match of text.matchAll(/```dtp-vector\n([\s\S]*?)```/g)) {
    const vector = JSON.parse(match[1]);
    if (kind === undefined || vector.kind === kind) out.push(vector);
  }
  return out;
}

export function loadTranscript(name) {
  return JSON.parse(readFileSync(join(ROOT, 'tests', 'golden', `conformance_${name}.json`), 'utf8'));
}

/** A carrier that records what the connection sends, as hex. */
export class RecordingCarrier {
  constructor() {
    this.sent = [];
    this.closed = false;
  }

  send(record) {
    if (this.closed) throw new Error('send after close');
    this.sent.push(Buffer.from(record).toString('hex'));
  }

  close() {
    this.closed = true;
  }
}

/** Lets pending promises, microtasks and zero-delay timers run. */
export async function settle(rounds = 5) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setTimeout(resolve, 0));
}
