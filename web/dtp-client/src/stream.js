// One stream of a connection (docs/protocol.md section 10): an ordered byte stream each
// way. Reads hand out what arrived, in order; writes wait for flow-control credit.

import { concat, utf8Piece } from './bytes.js';
import { ConnectionClosed, StreamReset } from './errors.js';

export class Stream {
  constructor(connection, id, { sendLimit, receiveWindow }) {
    this.connection = connection;
    this.id = id;
    // receiving
    this.chunks = [];
    this.received = 0; // bytes received, in order (the next offset expected)
    this.consumed = 0; // bytes the application read
    this.finalSize = null; // set by STREAM_FIN or RESET_STREAM
    this.receiveWindow = receiveWindow;
    this.receiveLimit = receiveWindow; // what the peer may send up to
    this.resetByPeer = null; // StreamReset
    this.readers = [];
    this.readEnded = false; // FIN read by the application, or the half given up
    // sending
    this.sendLimit = sendLimit;
    this.sent = 0;
    this.queue = []; // {data, fin, resolve, reject}
    this.finQueued = false;
    this.finSent = false;
    this.resetSent = false;
    this.stopCode = null;
    this.announced = false;
    this.failure = null; // the connection's end, once it ended
  }

  /** The next bytes of the stream (at most `max`), or null at its end. */
  read(max = Infinity) {
    if (!this.announced) this.connection._announce(this);
    return new Promise((resolve, reject) => {
      this.readers.push({ max, resolve, reject });
      this._serveReaders();
    });
  }

  /** Everything up to the end of the stream, as one Uint8Array. */
  readAll() {
    if (!this.announced) this.connection._announce(this);
    const parts = [];
    // what arrived already is taken at once; the rest is gathered by one waiting reader
    // as it comes (a short answer, whole with its end in one record: one promise a call)
    while (this._readable()) {
      const chunk = this._takeNow();
      if (chunk === null) return Promise.resolve(joined(parts));
      parts.push(chunk);
    }
    return new Promise((resolve, reject) => {
      this.readers.push({ max: Infinity, parts, resolve, reject });
      this._serveReaders();
    });
  }

  /** Whether a read would be answered at once, with bytes or the clean end (not an error:
   * that is read()'s to give). */
  _readable() {
    return this.readers.length === 0 && this.resetByPeer === null
      && (this.chunks.length > 0 || (this.finalSize !== null && this.consumed === this.finalSize));
  }

  /** What read() would resolve to now, when _readable() (the next chunk whole, or null). */
  _takeNow() {
    if (!this.announced) this.connection._announce(this);
    if (this.chunks.length) {
      const chunk = this.chunks.shift();
      this.consumed += chunk.length;
      this.connection._consumed(this, chunk.length);
      return chunk;
    }
    if (!this.readEnded) {
      this.readEnded = true;
      this.connection._maybeDone(this);
    }
    return null;
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      const chunk = await this.read();
      if (chunk === null) return;
      yield chunk;
    }
  }

  /** Queues `data` (bytes, or a string: its UTF-8); resolves once every byte of it went
   * out (flow control permitting). */
  write(data) {
    return this._enqueue(data, false);
  }

  /** Ends this side of the stream (STREAM_FIN), after `data` (as write's) if given. */
  end(data = new Uint8Array(0)) {
    return this._enqueue(data, true);
  }

  /** Abandons this side (RESET_STREAM with an application error code). */
  reset(errorCode = 0) {
    this.connection._resetStream(this, errorCode);
  }

  /** Asks the peer to stop sending (STOP_SENDING); what it sent is dropped. */
  stopSending(errorCode = 0) {
    this.connection._stopSending(this, errorCode);
  }

  get writable() {
    return !this.finQueued && !this.resetSent && this.failure === null;
  }

  _enqueue(data, fin) {
    if (typeof data === 'string') data = utf8Piece(data);
    if (this.failure) return Promise.reject(this.failure);
    if (this.resetSent || this.stopCode !== null) {
      return Promise.reject(new StreamReset(this.id, this.stopCode ?? 0));
    }
    if (this.finQueued) return Promise.reject(new Error(`stream ${this.id} was ended`));
    if (fin) this.finQueued = true;
    // nothing queued before it and the credit for all of it: sent now, with no queue entry
    // (a call's request, with its FIN: what _pump would send at once)
    if (this.queue.length === 0 && this.connection._sendNow(this, data, fin)) return RESOLVED;
    return new Promise((resolve, reject) => {
      this.queue.push({ data, fin, resolve, reject });
      this.connection._queued(this);
    });
  }

  _deliver(data) {
    if (data.length) this.chunks.push(data);
    this._serveReaders();
  }

  _serveReaders() {
    while (this.readers.length) {
      const reader = this.readers[0];
      if (this.resetByPeer) {
        this.readers.shift().reject(this.resetByPeer);
        continue;
      }
      if (this.chunks.length) {
        let chunk = this.chunks[0];
        if (reader.parts) {
          // readAll's: every chunk, until the end
          this.chunks.shift();
          this.consumed += chunk.length;
          this.connection._consumed(this, chunk.length);
          reader.parts.push(chunk);
          continue;
        }
        if (chunk.length > reader.max) {
          this.chunks[0] = chunk.subarray(reader.max);
          chunk = chunk.subarray(0, reader.max);
        } else {
          this.chunks.shift();
        }
        this.readers.shift();
        this.consumed += chunk.length;
        this.connection._consumed(this, chunk.length);
        reader.resolve(chunk);
        continue;
      }
      if (this.finalSize !== null && this.consumed === this.finalSize) {
        this.readers.shift().resolve(reader.parts ? joined(reader.parts) : null);
        if (!this.readEnded) {
          this.readEnded = true;
          this.connection._maybeDone(this);
        }
        continue;
      }
      if (this.failure) {
        this.readers.shift().reject(this.failure);
        continue;
      }
      break;
    }
  }

  /** The connection ended: stream 0 ends cleanly on a NO_ERROR close; any other stream
   * still receiving gives what it buffered, then the error (section 3.1, CLOSE). */
  _connectionEnded(error, clean) {
    this.failure = error;
    if (clean && this.finalSize === null) this.finalSize = this.received;
    for (const item of this.queue.splice(0)) item.reject(error);
    this._serveReaders();
  }
}

/** The parts readAll gathered, as one Uint8Array (the one part itself where there is one). */
function joined(parts) {
  return parts.length === 1 ? parts[0] : concat(...parts);
}

const RESOLVED = Promise.resolve();

export { ConnectionClosed };
