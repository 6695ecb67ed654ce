// A DTP client connection over an in-order carrier (docs/protocol.md sections 8 to 11):
// the handshake with its identity proof and verdict, then streams, datagrams and close.
//
// A carrier is {send(record), close()}; it hands the connection each record it receives
// (`_onRecord(bytes)`) and says when it went away (`_onCarrierClosed(why)`). The WebSocket
// carrier (websocket.js) is the one browsers use; tests drive it with a recording one.

import { concat, fromUtf8, hex, utf8 } from './bytes.js';
import {
  CloseCode, ConnectionClosed, ConnectionRefused, DTPError, HandshakeError, ProtocolError, StreamReset,
  TimeoutError,
} from './errors.js';
import {
  CONTROL_ACCEPT, CONTROL_AUTH, FrameType, MAX_CLOSE_REASON, MAX_FRAME_DATA, decodeFrames, encodeFrames, frame,
} from './frames.js';
import { isEd25519Proof, makeProof, proofMessage } from './identity.js';
import { Initiator, NOISE_OVERHEAD, PATTERN_BYTE, ikBinding } from './noise.js';
import { DEFAULT_PARAMS, TRANSPORT_VERSION, decodeParams, encodeParams } from './params.js';
import { RecordKind, RecordProtection, handshakeRecord, parseHeader } from './record.js';
import { Stream } from './stream.js';
import { connectionCid } from './ids.js';

const MAX_PAYLOAD = 3968; // section 8.1
const VARINT_LIMIT = 2 ** 62 - 1;
/** Stream bytes per STREAM frame: a frame's header (type, two 8-byte varints, a length)
 * and its data fit one record's 16384 plaintext bytes. */
export const STREAM_CHUNK = MAX_FRAME_DATA - 32;
const KEEPALIVE_MS = 15000;
const NO_RANGES = Object.freeze([]);
/** Where a record's STREAM frame is encoded before it is sealed (_sendFrames). */
const PLAINTEXT = new Uint8Array(MAX_FRAME_DATA);

export const State = Object.freeze({
  HANDSHAKE: 'handshake', // before the keys
  AWAITING_VERDICT: 'awaiting-verdict', // keys, no ACCEPT yet
  OPEN: 'open',
  CLOSED: 'closed',
});

function cutReason(reason) {
  // at most 1024 bytes, cut at a UTF-8 character boundary (section 3.1, CLOSE)
  let bytes = utf8(reason);
  if (bytes.length <= MAX_CLOSE_REASON) return bytes;
  let end = MAX_CLOSE_REASON;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  bytes = bytes.slice(0, end);
  return bytes;
}

/** Whether a signer says it signs with an Ed25519 key (ed25519Signer, keypairSigner of
 * an Ed25519Keypair): its proof is version 1's, whatever the version offered. */
function ed25519Signer(signer) {
  return typeof signer?.scheme === 'string' && signer.scheme.toUpperCase() === 'ED25519';
}

export class Connection {
  /**
   * Options: `signer` ({address, signPersonalMessage}: the client's identity, section 8.4);
   * `serverKey` (32 bytes or hex: IK, else XX); `expectedServerKey` (XX: refuse another);
   * `params` (overrides of {md, msd, ms, it}); `cid` (the ledger connection's ID: "0x" and
   * hex, hex, or 32 bytes; anything else a TypeError), `port` (optional parameters);
   * `handshakeTimeout` (ms, 10000); `staticKey`, `ephemeralKey` (X25519 key pairs: only
   * to replay fixed transcripts); `logger` (console-like, optional).
   */
  constructor(carrier, options = {}) {
    // (a ServerConnection, server.js, is this class with the responder's handshake)
    const client = new.target === Connection;
    if (client && !options.signer) throw new TypeError('a signer ({address, signPersonalMessage}) is required');
    this.carrier = carrier;
    this.options = options;
    this.signer = options.signer;
    // the ledger connection's ID, as 32 bytes whatever form it came in (a string sent
    // as it was would be encoded as zeros, and the server would refuse the connection)
    this.cid = options.cid === undefined || options.cid === null ? null : connectionCid(options.cid);
    this.state = State.HANDSHAKE;
    const serverKey = typeof options.serverKey === 'string' ? fromHexKey(options.serverKey) : options.serverKey;
    this.pattern = serverKey ? 'IK' : 'XX';
    this.serverKey = serverKey ?? null;
    // the version a client offers: 1 when its proof is Ed25519 (what a version-1 server
    // takes), else 2 (section 8.2); a server answers (server.js)
    this.localParams = { ...DEFAULT_PARAMS, ...(options.params ?? {}), v: ed25519Signer(options.signer) ? 1 : TRANSPORT_VERSION };
    this.peerParams = null;
    this.noise = client && new Initiator({
      pattern: this.pattern,
      remoteStatic: this.serverKey,
      ...(options.staticKey ? { staticKey: options.staticKey } : {}),
      ...(options.ephemeralKey ? { ephemeralKey: options.ephemeralKey } : {}),
    });
    this.protection = null;
    this.handshakeHash = null;
    this.streams = new Map();
    this.sending = new Set(); // streams with something queued (_pump's work list)
    this.nextLocalStream = 0; // client streams are even
    this.nextPeerStream = 1; // server streams are odd
    this.localStreamsOpened = 0;
    // whether stream 0 (the client's first, which the connection opens) has carried data,
    // either way: a request only then (docs/escrow.md 6.1)
    this.firstStreamCarried = false;
    this.peerMaxStreams = 0; // how many streams we may open
    this.peerStreamsDone = 0;
    this.acceptQueue = [];
    this.acceptWaiters = [];
    this.streamWaiters = [];
    // connection flow control (section 10.3)
    this.sendLimit = 0;
    this.sentTotal = 0;
    this.receiveLimit = this.localParams.md;
    this.receivedTotal = 0;
    this.consumedTotal = 0;
    this.lastMaxData = 0;
    this.datagramBytes = 0; // DATAGRAM payloads sent and received (metered, docs/escrow.md 6.1)
    this.closeInfo = null;
    this.ondatagram = null;
    this.oncontrol = null;
    this.onreceipt = null;
    this.timers = {};
    this._handshakeWaiter = null;
    this.closed = new Promise((resolve) => {
      this._resolveClosed = resolve;
    });
  }

  /** Runs the handshake up to the verdict; resolves to the connection once accepted. */
  async open() {
    const timeout = this.options.handshakeTimeout ?? 10000;
    this.timers.handshake = setTimeout(() => this._handshakeTimedOut(), timeout);
    try {
      await this._handshake();
    } finally {
      clearTimeout(this.timers.handshake);
    }
    return this;
  }

  /** The Sui address the connection proved (the signer's). */
  get address() {
    return this.signer.address;
  }

  get serverStaticKey() {
    return this.noise.remoteStatic;
  }

  async _handshake() {
    const params = { ...this.localParams };
    if (this.cid) params.cid = this.cid;
    if (this.options.port !== undefined) params.port = this.options.port;
    if (this.pattern === 'IK') {
      const binding = ikBinding(this.serverKey, this.noise.e.publicKey);
      params.auth = await makeProof(this.signer, proofMessage('IK', binding));
      params.v = isEd25519Proof(params.auth) ? 1 : TRANSPORT_VERSION;
      this.localParams.v = params.v;
    }
    const payload = encodeParams(params);
    if (payload.length > MAX_PAYLOAD) throw new HandshakeError('the transport parameters are too large');
    this._checkOpen();
    const message1 = this.noise.writeMessage1(payload);
    this._sendRaw(handshakeRecord(RecordKind.HS_INIT, concat(Uint8Array.of(PATTERN_BYTE[this.pattern]), message1)));

    const [header, record] = await this._nextHandshakeRecord();
    if (header.kind !== RecordKind.HS_RESP || header.counter !== 0n) {
      throw this._failHandshake(new HandshakeError(`expected HS_RESP with counter 0, got kind ${header.kind}`));
    }
    this._checkOpen();
    const message2 = record.subarray(12);
    const overhead = NOISE_OVERHEAD[this.pattern][1];
    if (message2.length - overhead > MAX_PAYLOAD) throw this._failHandshake(new HandshakeError('message 2 payload too large'));
    let serverParams;
    try {
      serverParams = decodeParams(this.noise.readMessage2(message2));
    } catch (err) {
      throw this._failHandshake(err instanceof HandshakeError ? err : new HandshakeError(String(err)));
    }
    if (serverParams.v < 1 || serverParams.v > this.localParams.v) {
      throw this._failHandshake(new HandshakeError(`the server answered transport version ${serverParams.v}`));
    }
    this.peerParams = serverParams;
    this.sendLimit = serverParams.md;
    this.peerMaxStreams = serverParams.ms;
    const outgoing = [];
    if (this.pattern === 'XX') {
      const expected = this.options.expectedServerKey;
      if (expected) {
        const want = typeof expected === 'string' ? expected.toLowerCase() : hex(expected);
        if (hex(this.noise.remoteStatic) !== want) {
          throw this._failHandshake(new HandshakeError('the server\'s static key is not the expected one'));
        }
      }
      outgoing.push(handshakeRecord(RecordKind.HS_FINAL, this.noise.writeMessage3()));
    }
    const [sendKey, receiveKey] = this.noise.split();
    this.handshakeHash = this.noise.handshakeHash;
    this.protection = new RecordProtection(sendKey, receiveKey);
    if (this.pattern === 'XX') {
      let proof;
      try {
        proof = await makeProof(this.signer, proofMessage('XX', this.handshakeHash));
      } catch (err) {
        throw this._failHandshake(err instanceof DTPError ? err : new HandshakeError(`signing failed: ${err}`));
      }
      if (serverParams.v < 2 && !isEd25519Proof(proof)) {
        throw this._failHandshake(new HandshakeError(
          `the server speaks transport version ${serverParams.v}, which takes only Ed25519 identity proofs: this wallet's proof is of another scheme`,
        ));
      }
      this._checkOpen();
      for (const r of outgoing) this._sendRaw(r);
      this._sendFrames([frame(FrameType.CONTROL, { a: CONTROL_AUTH, data: proof })]);
    }
    this._checkOpen();
    this.state = State.AWAITING_VERDICT;
    this._armIdle();
    // records that came with message 2 (the ACCEPT or a CLOSE) are in the backlog
    const verdict = new Promise((resolve, reject) => {
      this._verdictWaiter = { resolve, reject };
    });
    const early = this._backlog;
    this._backlog = null;
    for (const r of early) this._onRecord(r);
    await verdict;
  }

  _nextHandshakeRecord() {
    return new Promise((resolve, reject) => {
      this._handshakeWaiter = { resolve, reject };
    });
  }

  _checkOpen() {
    if (this.state === State.CLOSED) throw this.closeInfo.error;
  }

  _failHandshake(error) {
    // no keys yet: nothing authenticated can be sent (section 8.6)
    this._end(error, { sendClose: false });
    return error;
  }

  _handshakeTimedOut() {
    const error = new TimeoutError('the handshake did not finish in time', CloseCode.HANDSHAKE_FAILED);
    if (this.protection) this._closeWith(CloseCode.HANDSHAKE_FAILED, 'handshake timeout', error);
    else this._end(error, { sendClose: false });
  }

  // ---- receiving -------------------------------------------------------------------

  /** A record from the carrier (one whole record: the carrier splits them). */
  _onRecord(record) {
    if (this.state === State.CLOSED) return;
    let header;
    try {
      header = parseHeader(record);
      if (record.length !== 12 + header.bodyLength) throw new ProtocolError('RECORD_SIZE', 'record length mismatch', CloseCode.FRAME_ENCODING_ERROR);
    } catch (err) {
      this._protocolFailure(err);
      return;
    }
    this._armIdle();
    if (this._backlog) {
      // records behind message 2, kept in order until the keys and the proof are ready
      this._backlog.push(record);
      return;
    }
    if (this.protection === null) {
      if (this._handshakeWaiter) {
        const waiter = this._handshakeWaiter;
        this._handshakeWaiter = null;
        if (header.kind === RecordKind.DATA) {
          waiter.reject(this._failHandshake(new HandshakeError('a DATA record before the handshake completed')));
        } else {
          // what arrives behind message 2 waits until its keys (and, in XX, the proof) are ready
          this._backlog = [];
          waiter.resolve([header, record]);
        }
      } else {
        this._protocolFailure(new HandshakeError(`an unexpected record of kind ${header.kind} during the handshake`));
      }
      return;
    }
    if (header.kind !== RecordKind.DATA) {
      this._closeWith(CloseCode.PROTOCOL_VIOLATION, 'a handshake record after the handshake');
      return;
    }
    let frames;
    try {
      // (the plaintext is the connection's own: its frames' data are views of it)
      frames = decodeFrames(this.protection.open(record, header), true);
    } catch (err) {
      this._protocolFailure(err);
      return;
    }
    // the record is opened whole before any frame acts (section 11, "Which error wins")
    for (const f of frames) {
      if (this.state === State.CLOSED) return;
      try {
        this._onFrame(f);
      } catch (err) {
        this._protocolFailure(err);
        return;
      }
    }
    if (this.sending.size) this._pump();
  }

  _protocolFailure(err) {
    const code = err instanceof DTPError && err.code !== undefined ? err.code : CloseCode.INTERNAL_ERROR;
    if (this.protection === null) {
      const error = new HandshakeError(err.message, code);
      if (this._handshakeWaiter) {
        const waiter = this._handshakeWaiter;
        this._handshakeWaiter = null;
        waiter.reject(error);
      }
      this._end(error, { sendClose: false });
    } else {
      this._closeWith(code, err.message);
    }
  }

  _onFrame(f) {
    switch (f.type) {
      case FrameType.PADDING:
      case FrameType.PING:
      case FrameType.ACK: // ignored on an in-order carrier (section 10.4)
        return;
      case FrameType.CLOSE:
        this._peerClosed(Number(f.a), fromUtf8(f.data));
        return;
      case FrameType.MAX_DATA:
        this.sendLimit = Math.max(this.sendLimit, Number(f.a));
        return;
      case FrameType.MAX_STREAMS:
        if (Number(f.a) > this.peerMaxStreams) {
          this.peerMaxStreams = Number(f.a);
          for (const waiter of this.streamWaiters.splice(0)) waiter();
        }
        return;
      case FrameType.CONTROL:
        this._onControl(Number(f.a), f.data);
        return;
      case FrameType.DATAGRAM:
        this.datagramBytes += f.data.length;
        this.ondatagram?.(f.data);
        return;
      case FrameType.RECEIPT:
        this.onreceipt?.(f.data);
        return;
      default:
        break;
    }
    // stream frames: none before the ACCEPT (section 8.5)
    if (this.state !== State.OPEN) throw new ProtocolError('VERDICT', `stream frame ${f.type} before the ACCEPT`);
    const id = Number(f.a);
    switch (f.type) {
      case FrameType.STREAM:
      case FrameType.STREAM_FIN: {
        const stream = this._streamFor(id, true);
        if (stream) this._onStreamData(stream, Number(f.b), f.data, f.type === FrameType.STREAM_FIN);
        return;
      }
      case FrameType.RESET_STREAM:
        this._onReset(this._streamFor(id, true), Number(f.b), Number(f.c));
        return;
      case FrameType.MAX_STREAM_DATA: {
        const stream = this._streamFor(id, false);
        if (stream && Number(f.b) > stream.sendLimit) stream.sendLimit = Number(f.b);
        return;
      }
      case FrameType.STOP_SENDING: {
        const stream = this._streamFor(id, false);
        if (stream) this._onStopSending(stream, Number(f.b));
        return;
      }
      default:
        throw new ProtocolError('FRAME_TYPE', `frame type ${f.type}`);
    }
  }

  _onControl(kind, body) {
    if (kind === CONTROL_ACCEPT) {
      if (this.state !== State.AWAITING_VERDICT) throw new ProtocolError('ACCEPT', 'a second ACCEPT');
      this.state = State.OPEN;
      if (this.pattern === 'IK' && this.peerMaxStreams >= 1 && this.nextLocalStream === 0) {
        // the ACCEPT opens the client's stream 0 on both sides, unannounced (section 10.1)
        const stream = this._newLocalStream();
        stream.announced = true;
        this._firstStream = stream;
      }
      const waiter = this._verdictWaiter;
      this._verdictWaiter = null;
      waiter?.resolve();
      return;
    }
    if (kind === CONTROL_AUTH) throw new ProtocolError('AUTH', 'an AUTH from the server');
    if (kind < 16) throw new ProtocolError('CONTROL', `reserved CONTROL kind ${kind}`);
    this.oncontrol?.(kind, body);
  }

  /** The stream `id` names, opening the peer's streams up to it (section 10.1); null for a
   * peer stream not yet opened when the frame opens nothing. */
  _streamFor(id, opens) {
    const existing = this.streams.get(id);
    if (existing) return existing;
    if (id % 2 === this.nextLocalStream % 2) {
      // ours: one we opened and are done with is forgotten (_maybeDone), what comes for
      // it is let go; one we never opened is a violation
      if (id < this.nextLocalStream) return null;
      throw new ProtocolError('STREAM_ID', `stream ${id} was never opened`);
    }
    if (id < this.nextPeerStream) return null; // forgotten (never happens: streams are kept)
    if (!opens) return null;
    if (Math.floor(id / 2) + 1 > this.localParams.ms + this.peerStreamsDone) {
      throw new ProtocolError('STREAM_LIMIT', `stream ${id} is beyond the stream limit`);
    }
    let stream = null;
    while (this.nextPeerStream <= id) {
      stream = new Stream(this, this.nextPeerStream, {
        sendLimit: this.peerParams.msd,
        receiveWindow: this.localParams.msd,
      });
      this.streams.set(stream.id, stream);
      this.nextPeerStream += 2;
      this._queueAccept(stream);
    }
    return stream;
  }

  _queueAccept(stream) {
    const waiter = this.acceptWaiters.shift();
    if (waiter) {
      stream.accepted = true;
      waiter.resolve(stream);
    } else {
      this.acceptQueue.push(stream);
    }
  }

  _onStreamData(stream, offset, data, fin) {
    const end = offset + data.length;
    // the checks in the order of section 11: final size, flow control, contiguity
    if (stream.finalSize !== null) {
      if (end > stream.finalSize || (fin && end !== stream.finalSize)) {
        throw new ProtocolError('FINAL_SIZE', `stream ${stream.id}: data past its final size`);
      }
      return; // within the final size after the end: let go
    }
    if (fin && end < stream.received) throw new ProtocolError('FINAL_SIZE', `stream ${stream.id}: FIN below data received`);
    if (end > stream.receiveLimit) throw new ProtocolError('FLOW', `stream ${stream.id} beyond its limit`, CloseCode.FLOW_CONTROL_ERROR);
    const grown = Math.max(0, end - stream.received);
    if (this.receivedTotal + grown > this.receiveLimit) {
      throw new ProtocolError('FLOW', 'beyond the connection\'s limit', CloseCode.FLOW_CONTROL_ERROR);
    }
    if (offset !== stream.received) throw new ProtocolError('CONTIGUITY', `stream ${stream.id}: offset ${offset}, expected ${stream.received}`);
    this.receivedTotal += grown;
    if (grown > 0 && stream.id === 0) this.firstStreamCarried = true;
    stream.received = end;
    if (fin) stream.finalSize = end;
    if (stream.stopCode !== null) {
      // we asked the peer to stop: drop what comes, and credit it back
      stream.consumed += data.length;
      this._consumed(stream, data.length);
      if (fin) this._readHalfEnded(stream);
      return;
    }
    stream._deliver(data);
  }

  _onReset(stream, errorCode, finalSize) {
    if (stream === null) return;
    if (stream.finalSize !== null && stream.finalSize !== finalSize) {
      throw new ProtocolError('FINAL_SIZE', `stream ${stream.id}: RESET_STREAM at another final size`);
    }
    if (finalSize < stream.received) throw new ProtocolError('FINAL_SIZE', `stream ${stream.id}: RESET_STREAM below data received`);
    if (finalSize > stream.receiveLimit) throw new ProtocolError('FLOW', `stream ${stream.id} beyond its limit`, CloseCode.FLOW_CONTROL_ERROR);
    const grown = finalSize - stream.received;
    if (this.receivedTotal + grown > this.receiveLimit) {
      throw new ProtocolError('FLOW', 'beyond the connection\'s limit', CloseCode.FLOW_CONTROL_ERROR);
    }
    if (stream.resetByPeer) return;
    this.receivedTotal += grown;
    if (finalSize > 0 && stream.id === 0) this.firstStreamCarried = true;
    stream.received = finalSize;
    stream.finalSize = finalSize;
    // the bytes never read are credited at once: they will never be read (section 3.1)
    const unread = finalSize - stream.consumed;
    stream.consumed = finalSize;
    stream.chunks = [];
    this._consumed(stream, unread, true);
    stream.resetByPeer = new StreamReset(stream.id, errorCode);
    stream._serveReaders();
    this._readHalfEnded(stream);
  }

  _onStopSending(stream, errorCode) {
    if (stream.resetSent || (stream.finSent && stream.queue.length === 0)) return;
    stream.stopCode = errorCode;
    this._sendReset(stream, errorCode);
  }

  _readHalfEnded(stream) {
    if (!stream.readEnded) {
      stream.readEnded = true;
      this._maybeDone(stream);
    }
  }

  /** Credits read bytes back to the peer: MAX_STREAM_DATA and MAX_DATA once a quarter of
   * the window was read since the last update (section 10.3). */
  _consumed(stream, n, streamOver = false) {
    if (this.state === State.CLOSED || n <= 0) return;
    this.consumedTotal += n;
    const frames = [];
    const md = this.localParams.md;
    if (this.consumedTotal - this.lastMaxData >= md / 4) {
      this.lastMaxData = this.consumedTotal;
      this.receiveLimit = Math.min(VARINT_LIMIT, this.consumedTotal + md);
      frames.push(frame(FrameType.MAX_DATA, { a: this.receiveLimit }));
    }
    if (!streamOver && stream.finalSize === null) {
      const msd = stream.receiveWindow;
      if (stream.consumed - (stream.lastMaxStreamData ?? 0) >= msd / 4) {
        stream.lastMaxStreamData = stream.consumed;
        stream.receiveLimit = Math.min(VARINT_LIMIT, stream.consumed + msd);
        frames.push(frame(FrameType.MAX_STREAM_DATA, { a: stream.id, b: stream.receiveLimit }));
      }
    }
    if (frames.length && this.protection) queueMicrotask(() => this.state !== State.CLOSED && this._sendFrames(frames));
  }

  /** A peer's stream both of whose halves ended, and that the application took, is done
   * with: the peer may open one more (MAX_STREAMS, section 10.1), sent at once or, given
   * `into`, added to the frames of the record under way. */
  _maybeDone(stream, into = null) {
    if (stream.done || !stream.accepted) return;
    const sendEnded = stream.finSent || stream.resetSent;
    if (!stream.readEnded || !sendEnded) return;
    if (stream.id % 2 === this.nextLocalStream % 2) {
      // ours, ended both ways: forgotten, or a connection making a call a stream (a
      // dApp's JSON-RPC calls) would keep every stream it ever opened
      stream.done = true;
      this.streams.delete(stream.id);
      return;
    }
    stream.done = true;
    this.peerStreamsDone += 1;
    const more = frame(FrameType.MAX_STREAMS, { a: this.localParams.ms + this.peerStreamsDone });
    if (into) into.push(more);
    else if (this._canSend()) this._sendFrames([more]); // (nothing goes out once closed)
  }

  // ---- streams -----------------------------------------------------------------------

  _newLocalStream() {
    const stream = new Stream(this, this.nextLocalStream, {
      sendLimit: this.peerParams.msd,
      receiveWindow: this.localParams.msd,
    });
    stream.accepted = true;
    this.streams.set(stream.id, stream);
    this.nextLocalStream += 2;
    this.localStreamsOpened += 1;
    return stream;
  }

  /** Opens a stream of the client's (even IDs); waits while the server's stream limit is
   * reached. In IK the first call returns stream 0, which the ACCEPT opened. A stream may
   * be opened and written before the verdict, once the keys exist (section 8.5): the
   * server holds what it carries until it accepts. */
  openStream() {
    // (no wait for a place, the usual case: the stream at once, without an async call)
    if (this.state !== State.CLOSED && this.protection && !this._firstStream
        && this.localStreamsOpened < this.peerMaxStreams) {
      return Promise.resolve(this._newLocalStream());
    }
    return this._openStream();
  }

  async _openStream() {
    this._checkOpen();
    if (!this.protection) throw new Error('streams open once the handshake has its keys');
    if (this._firstStream) {
      const stream = this._firstStream;
      this._firstStream = null;
      return stream;
    }
    while (this.localStreamsOpened >= this.peerMaxStreams) {
      await new Promise((resolve) => this.streamWaiters.push(resolve));
      this._checkOpen();
    }
    // opened on the wire by its first frame: what the application writes, or, read
    // before anything was written, an empty STREAM frame (section 10.1; _announce). (A
    // timer per stream that announced it unless written in the same turn cost more than
    // the rest of a short call's work in the client: bench/web_rows.py.)
    return this._newLocalStream();
  }

  /** A stream of ours read before anything was written to it: the peer learns of it by
   * an empty STREAM frame (section 10.1), as it would have from a first write. */
  _announce(stream) {
    if (stream.announced || stream.queue.length || stream.finSent || stream.resetSent) return;
    if (stream.id % 2 !== this.nextLocalStream % 2 || !this._canSend()) return;
    stream.announced = true;
    this._sendFrames([frame(FrameType.STREAM, { a: stream.id, b: 0 })]);
  }

  /** The next stream the server opened. */
  acceptStream() {
    this._checkOpen();
    const stream = this.acceptQueue.shift();
    if (stream) {
      stream.accepted = true;
      this._maybeDone(stream);
      return Promise.resolve(stream);
    }
    return new Promise((resolve, reject) => this.acceptWaiters.push({ resolve, reject }));
  }

  /** Sends what the streams have queued, as credit allows: one STREAM frame per record. */
  _canSend() {
    return this.protection !== null && (this.state === State.OPEN || this.state === State.AWAITING_VERDICT);
  }

  /** A stream queued something: send what credit allows. */
  _queued(stream) {
    this.sending.add(stream);
    this._pump();
  }

  _pump() {
    if (!this._canSend() || this.sending.size === 0) return;
    for (const stream of this.sending) {
      if (stream.queue.length === 0) {
        this.sending.delete(stream);
        continue;
      }
      while (stream.queue.length) {
        const item = stream.queue[0];
        const credit = Math.min(stream.sendLimit - stream.sent, this.sendLimit - this.sentTotal);
        const n = Math.min(item.data.length, STREAM_CHUNK, Math.max(0, credit));
        if (n === 0 && item.data.length > 0) break;
        const last = n === item.data.length;
        const fin = last && item.fin;
        this._sendStreamFrame(stream, last ? item.data : item.data.subarray(0, n), fin);
        if (last) {
          stream.queue.shift();
          item.resolve();
        } else {
          item.data = item.data.subarray(n);
        }
      }
      if (stream.queue.length === 0) this.sending.delete(stream);
    }
  }

  /** Sends `data` on `stream` at once, if nothing keeps it back: the connection sends,
   * and the credit covers it whole in one frame (false: left to the stream's queue). */
  _sendNow(stream, data, fin) {
    if (!this._canSend() || data.length > STREAM_CHUNK) return false;
    const n = data.length;
    if (n > 0 && (n > stream.sendLimit - stream.sent || n > this.sendLimit - this.sentTotal)) return false;
    this._sendStreamFrame(stream, data, fin);
    return true;
  }

  /** One STREAM (or STREAM_FIN) frame of `stream` at its offset, in a record of its own. */
  _sendStreamFrame(stream, chunk, fin) {
    const n = chunk.length;
    const frames = [{
      type: fin ? FrameType.STREAM_FIN : FrameType.STREAM, a: stream.id, b: stream.sent, c: 0, data: chunk, ranges: NO_RANGES,
    }];
    stream.announced = true;
    stream.sent += n;
    this.sentTotal += n;
    if (n > 0 && stream.id === 0) this.firstStreamCarried = true;
    if (fin) {
      stream.finSent = true;
      // a FIN that ends a peer's stream carries its MAX_STREAMS in the same record
      // (section 12's transcripts: the answer to a call is one record)
      this._maybeDone(stream, frames);
    }
    this._sendFrames(frames);
  }

  _resetStream(stream, errorCode) {
    this._checkOpen();
    if (stream.resetSent || stream.finSent) return;
    this._sendReset(stream, errorCode);
  }

  _sendReset(stream, errorCode) {
    stream.resetSent = true;
    stream.announced = true;
    for (const item of stream.queue.splice(0)) item.reject(new StreamReset(stream.id, errorCode));
    this._sendFrames([frame(FrameType.RESET_STREAM, { a: stream.id, b: errorCode, c: stream.sent })]);
    this._maybeDone(stream);
  }

  _stopSending(stream, errorCode) {
    this._checkOpen();
    if (stream.finalSize !== null || stream.stopCode !== null) return;
    stream.stopCode = errorCode;
    const unread = stream.chunks.reduce((n, c) => n + c.length, 0);
    stream.chunks = [];
    stream.consumed += unread;
    this._consumed(stream, unread);
    this._sendFrames([frame(FrameType.STOP_SENDING, { a: stream.id, b: errorCode })]);
  }

  // ---- datagrams and control ---------------------------------------------------------

  /** Sends an unreliable message (DATAGRAM, at most 16384 bytes). */
  sendDatagram(data) {
    this._checkOpen();
    this._sendFrames([frame(FrameType.DATAGRAM, { data })]);
    this.datagramBytes += data.length;
  }

  /** Sends a RECEIPT frame (docs/protocol.md 3.1): a signed receipt's encoding, made by a
   * Payment (receipt.js). */
  sendReceipt(encoded) {
    this._checkOpen();
    this._sendFrames([frame(FrameType.RECEIPT, { data: encoded })]);
  }

  /** What a paid service meters (docs/escrow.md 6.1): application bytes both ways (new
   * stream bytes sent and received, datagram payloads) and requests (the streams the
   * client opened, the first one -- stream 0, which the connection opens -- only once data
   * went on it, either way: held open and ended empty, it carries none). */
  get usage() {
    return { bytes: this.sentTotal + this.receivedTotal + this.datagramBytes, requests: this._requests(this.localStreamsOpened) };
  }

  /** The requests of `opened` client streams: the first one counts once it carried data. */
  _requests(opened) {
    return opened > 0 && !this.firstStreamCarried ? opened - 1 : opened;
  }

  /** Sends a CONTROL message of an application kind (16 and up). */
  sendControl(kind, body = new Uint8Array(0)) {
    if (kind < 16) throw new RangeError('CONTROL kinds below 16 belong to the transport');
    this._checkOpen();
    this._sendFrames([frame(FrameType.CONTROL, { a: kind, data: body })]);
  }

  // ---- sending -----------------------------------------------------------------------

  _sendRaw(record) {
    this.carrier.send(record);
    this._armKeepalive();
  }

  _sendFrames(frames) {
    // (the plaintext is sealed at once: a record's STREAM frame is written into one
    // buffer kept for that, not an array of its own each time)
    this._sendRaw(this.protection.seal(encodeFrames(frames, PLAINTEXT)));
  }

  // The keepalive and the idle timeout are deadlines that each record sent (received)
  // moves: a timer armed once checks its deadline when it fires and re-arms itself for
  // what is left. (Re-arming on every record cost a setTimeout and a clearTimeout per
  // record each way, the largest cost of a short call in a browser after the WebSocket
  // itself: bench/web_rows.py.)

  _armKeepalive() {
    if (!this.peerParams || this.state === State.CLOSED) return;
    this._lastSent = Date.now();
    if (this.timers.keepalive === undefined) this._keepaliveIn(this._keepaliveInterval());
  }

  _keepaliveInterval() {
    const peerIdle = this.peerParams.it;
    return peerIdle < 2 * KEEPALIVE_MS ? Math.max(1000, peerIdle / 2) : KEEPALIVE_MS;
  }

  _keepaliveIn(delay) {
    this.timers.keepalive = setTimeout(() => {
      this.timers.keepalive = undefined;
      if (this.state === State.CLOSED || !this.protection) return;
      const left = this._lastSent + this._keepaliveInterval() - Date.now();
      if (left > 0) this._keepaliveIn(left);
      else this._sendFrames([frame(FrameType.PING)]); // (which arms the next)
    }, delay);
    unref(this.timers.keepalive);
  }

  _armIdle() {
    if (this.state === State.CLOSED || this.state === State.HANDSHAKE) return;
    const idle = this.localParams.it;
    if (idle <= 0) return;
    this._idleFrom = Date.now();
    if (this.timers.idle === undefined) this._idleIn(idle);
  }

  _idleIn(delay) {
    this.timers.idle = setTimeout(() => {
      this.timers.idle = undefined;
      if (this.state === State.CLOSED) return;
      const left = this._idleFrom + this.localParams.it - Date.now();
      if (left > 0) {
        this._idleIn(left);
        return;
      }
      // an idle timeout closes the carrier silently on an in-order carrier (section 11)
      this._end(new ConnectionClosed(CloseCode.IDLE_TIMEOUT, 'idle timeout', false), { sendClose: false });
    }, delay);
    unref(this.timers.idle);
  }

  // ---- closing -----------------------------------------------------------------------

  /** Closes the connection with `code` (0: NO_ERROR) and a reason; resolves once done. */
  close(code = CloseCode.NO_ERROR, reason = '') {
    if (this.state === State.AWAITING_VERDICT && code === CloseCode.NO_ERROR) {
      // a client that gives up before the verdict says so with HANDSHAKE_FAILED (section 11)
      code = CloseCode.HANDSHAKE_FAILED;
      reason ||= 'the client cancelled the connect';
    }
    if (this.state !== State.CLOSED) {
      const error = new ConnectionClosed(code, reason, false);
      if (this.protection) this._closeWith(code, reason, error);
      else this._end(error, { sendClose: false });
    }
    return this.closed;
  }

  _closeWith(code, reason, error = null) {
    if (this.state === State.CLOSED) return;
    const err = error ?? new ConnectionClosed(code, reason, false);
    this._end(err, { sendClose: true, code, reason });
  }

  _peerClosed(code, reason) {
    let error;
    if (this.state === State.AWAITING_VERDICT) {
      error = code === CloseCode.HANDSHAKE_FAILED
        ? new HandshakeError(`the server failed the handshake: ${reason}`)
        : code === CloseCode.REFUSED || code >= CloseCode.APPLICATION
          ? new ConnectionRefused(code, reason)
          : new ConnectionClosed(code, reason, true);
    } else {
      error = new ConnectionClosed(code, reason, true);
    }
    this._end(error, { sendClose: false, byPeer: true, code, reason });
  }

  /** The carrier went away: with no CLOSE first, the connection is lost. */
  _onCarrierClosed(why = 'the carrier closed') {
    if (this.state === State.CLOSED) return;
    const error = this.protection
      ? new ConnectionClosed(CloseCode.CONNECTION_LOST, why, true)
      : new HandshakeError(`the connection closed during the handshake (${why})`);
    this._end(error, { sendClose: false, code: CloseCode.CONNECTION_LOST, reason: why });
  }

  _end(error, { sendClose, code = error.code ?? CloseCode.INTERNAL_ERROR, reason = error.reason ?? error.message, byPeer = false }) {
    if (this.state === State.CLOSED) return;
    if (sendClose && this.protection) {
      try {
        this._sendFrames([frame(FrameType.CLOSE, { a: code, data: cutReason(reason) })]);
      } catch (err) {
        this.options.logger?.warn?.('dtp: could not send the CLOSE', err);
      }
    }
    this.state = State.CLOSED;
    for (const t of Object.values(this.timers)) clearTimeout(t);
    this.closeInfo = { code, reason, byPeer, error };
    const clean = byPeer && code === CloseCode.NO_ERROR;
    for (const stream of this.streams.values()) stream._connectionEnded(error, clean && stream.id === 0);
    for (const w of this.acceptWaiters.splice(0)) w.reject(error);
    for (const w of this.streamWaiters.splice(0)) w();
    if (this._handshakeWaiter) {
      this._handshakeWaiter.reject(error);
      this._handshakeWaiter = null;
    }
    if (this._verdictWaiter) {
      this._verdictWaiter.reject(error);
      this._verdictWaiter = null;
    }
    try {
      this.carrier.close();
    } catch {
      // already closed
    }
    this._resolveClosed(this.closeInfo);
  }
}

function unref(timer) {
  if (timer && typeof timer === 'object' && typeof timer.unref === 'function') timer.unref();
}

function fromHexKey(text) {
  const clean = text.startsWith('0x') ? text.slice(2) : text;
  if (!/^[0-9a-fA-F]{64}$/.test(clean)) throw new TypeError('a server key is 32 bytes of hex');
  return Uint8Array.from(clean.match(/../g).map((b) => parseInt(b, 16)));
}
