// Refusing replayed Noise IK first messages at a server (docs/protocol.md section 8,
// "Replayed IK first messages"; the Python servers' dtp/transport/_admission.py (ReplayGuard) holds
// the same rule).
//
// An IK message 1 carries the client's identity proof and is encrypted to the server's
// static key alone: anyone who recorded one can send it again, and the server
// authenticates the client a second time. The replayer gets no keys, but the server
// decides on it first (a paid service reserves the client's ledger connection for it).
// A genuine message 1 opens with a fresh ephemeral key that no one else can write a
// valid message 1 with (Noise's `es`), so a server remembers the ephemeral keys of the IK
// first messages it authenticated and refuses one it has seen, before its decide hook.
//
// Three sets, each oldest first: the keys of connections the server accepted (only
// other accepted ones push them out: throw-away identities the server refuses cannot
// push a real client's key out and unlock its replay), those of the others (refused,
// failed), each holding at most `capacity`, and those whose verdict is still being
// decided, which nothing pushes out (a flood meanwhile would otherwise push the key out
// before its acceptance kept it). A decided key leaves the third set for the pool of its
// verdict, found by looking at the oldest two each time a key comes in or is accepted.

import { State } from './connection.js';

/** Keys remembered in each pool (accepted, and others), as the Python servers'. */
export const DEFAULT_CAPACITY = 32768;
/** Keys under decision looked at each time one comes in or is accepted. */
const SETTLE_PER_SIGHT = 2;

const KEY_START = 1; // after the pattern byte; an IK message 1 opens with `e`
const KEY_END = KEY_START + 32;
const PATTERN_IK = 1;

function keyText(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, '0');
  return out;
}

// (a connection under decision is held weakly where the platform can: one that is gone
// was decided, and is not kept alive here)
const weak = typeof WeakRef === 'function'
  ? (value) => new WeakRef(value)
  : (value) => ({ deref: () => value });

export class ReplayGuard {
  constructor(capacity = DEFAULT_CAPACITY) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new RangeError(`the replay guard must remember an integer of at least 1 keys, got ${capacity}`);
    }
    this.capacity = capacity;
    this._others = new Map();
    this._accepted = new Map();
    this._deciding = new Map();
    /** Replayed first messages refused so far. */
    this.refused = 0;
  }

  /** Keys remembered now (both pools, and those under decision). */
  get size() {
    return this._others.size + this._accepted.size + this._deciding.size;
  }

  /**
   * True, and `key` (the 32-byte ephemeral key, or its hex) remembered, the first time it
   * comes; false for a key seen already (a replay: counted). With `deciding`, the
   * connection whose verdict now runs, the key is held apart until that connection is
   * decided; without it, it joins the unaccepted pool at once.
   */
  firstSight(key, deciding = null) {
    const k = typeof key === 'string' ? key.toLowerCase() : keyText(key);
    if (this._others.has(k) || this._accepted.has(k) || this._deciding.has(k)) {
      this.refused += 1;
      return false;
    }
    if (deciding === null) {
      this._remember(this._others, k);
    } else {
      this._settleSome();
      this._deciding.set(k, weak(deciding));
    }
    return true;
  }

  /** `key`'s connection was accepted: kept among the accepted connections' keys. */
  accept(key) {
    const k = typeof key === 'string' ? key.toLowerCase() : keyText(key);
    this._deciding.delete(k);
    this._others.delete(k);
    this._remember(this._accepted, k);
    this._settleSome();
  }

  /** Whether `connection` (a ServerConnection whose IK client just proved who it is, its
   * verdict to come) came from a replayed first message. XX is never checked: its proof
   * signs the handshake hash, unique to the session, so a replay never authenticates. */
  isReplay(connection) {
    const key = firstMessageKey(connection);
    return key !== null && !this.firstSight(key, connection);
  }

  /** The server accepted `connection`: its IK first message's key joins the accepted. */
  accepted(connection) {
    const key = firstMessageKey(connection);
    if (key !== null) this.accept(key);
  }

  _remember(pool, k) {
    pool.delete(k);
    pool.set(k, true);
    if (pool.size > this.capacity) pool.delete(pool.keys().next().value);
  }

  _settleSome() {
    const n = Math.min(SETTLE_PER_SIGHT, this._deciding.size);
    for (let i = 0; i < n; i++) {
      const [k, ref] = this._deciding.entries().next().value;
      this._deciding.delete(k);
      const state = ref.deref()?.state;
      if (state === State.HANDSHAKE || state === State.AWAITING_VERDICT) {
        this._deciding.set(k, ref); // still undecided: to the back of the line
      } else if (state === State.OPEN) {
        this._remember(this._accepted, k);
      } else {
        this._remember(this._others, k); // refused, failed, or gone
      }
    }
  }
}

/** The ephemeral key of the IK first message a server connection read, or null (XX, or
 * none read yet). */
export function firstMessageKey(connection) {
  const message = connection.firstHandshakeMessage;
  if (!message || message.length < KEY_END || message[0] !== PATTERN_IK) return null;
  return message.subarray(KEY_START, KEY_END);
}
