// A DTP server connection over an in-order carrier: the responder's side of
// docs/protocol.md sections 8 to 11. The handshake reads the client's pattern byte, checks
// its identity proof (IK: in message 1; XX: the AUTH frame after message 3), answers with
// message 2 at once and then its verdict (section 8.5); the streams, flow control, close
// and keepalives are the client's (connection.js), with the parities swapped (the server
// opens the odd stream IDs).
//
// A page cannot listen on a port, so a server in a browser is reached through a relay:
// serveThroughRelay (relay.js) keeps a WebSocket open to one and runs a ServerConnection
// on each one a client is paired with (docs/web-frontend.md).

import { Connection, State } from './connection.js';
import { CloseCode, ConnectionClosed, ConnectionRefused, DTPError, HandshakeError, ProtocolError } from './errors.js';
import { CONTROL_ACCEPT, CONTROL_AUTH, FrameType, frame } from './frames.js';
import { checkProof, proofMessage } from './identity.js';
import { NOISE_OVERHEAD, Responder, ikBinding, keyPair } from './noise.js';
import { TRANSPORT_VERSION, decodeParams, encodeParams } from './params.js';
import { HEADER_SIZE, RecordKind, RecordProtection, handshakeRecord, parseHeader } from './record.js';
import { ReplayGuard } from './replay-guard.js';

const MAX_PAYLOAD = 3968; // section 8.1
const PATTERNS = Object.freeze({ 1: 'IK', 2: 'XX' });
/** What each event held before the verdict is charged (section 8.5). */
const HELD_EVENT_CHARGE = 64;
/** Frames taken at once before the verdict (section 8.5); the others are held. */
const IMMEDIATE = new Set([FrameType.PADDING, FrameType.PING, FrameType.ACK, FrameType.CLOSE, FrameType.MAX_DATA,
  FrameType.MAX_STREAMS]);
const STREAM_FRAMES = new Set([FrameType.STREAM, FrameType.STREAM_FIN, FrameType.RESET_STREAM,
  FrameType.MAX_STREAM_DATA, FrameType.STOP_SENDING]);

function asKeyPair(key) {
  if (key instanceof Uint8Array) return keyPair(key);
  if (typeof key === 'string') return keyPair(Uint8Array.from(key.replace(/^0x/, '').match(/../g).map((b) => parseInt(b, 16))));
  if (key && key.privateKey && key.publicKey) return key;
  throw new TypeError('staticKey is the server\'s X25519 private key (32 bytes or hex) or a key pair');
}

export class ServerConnection extends Connection {
  /**
   * Options: `staticKey` (required: the server's X25519 private key, 32 bytes or hex, or a
   * `keyPair()`; clients pin its public half, `serverStaticKey`); `decide` (called once
   * the client proved who it is with `{address, pattern, params, clientStatic}`; resolves
   * to `true` to accept, or `{code, reason}` to refuse: code 11 `REFUSED` unless given;
   * the default accepts everyone); `replayGuard` (a ReplayGuard, replay-guard.js, shared
   * by the connections of one server: an IK first message it saw before is refused with
   * HANDSHAKE_FAILED before `decide` runs; serveThroughRelay makes one); `params`,
   * `handshakeTimeout` (ms, 10000), `logger` as for a client; `ephemeralKey` (only to
   * replay fixed transcripts).
   */
  constructor(carrier, options = {}) {
    super(carrier, options);
    this.staticKey = asKeyPair(options.staticKey);
    if (options.replayGuard != null && !(options.replayGuard instanceof ReplayGuard)) {
      throw new TypeError('replayGuard is a ReplayGuard (replay-guard.js)');
    }
    this.replayGuard = options.replayGuard ?? null;
    /** The client's first handshake message as read (its pattern byte, then Noise's). */
    this.firstHandshakeMessage = null;
    this.noise = null;
    this.pattern = null; // from message 1's pattern byte
    this.nextLocalStream = 1; // server streams are odd
    this.nextPeerStream = 0; // client streams are even
    this.clientAddress = null;
    this.clientParams = null;
    this._awaitingAuth = false;
    this._held = [];
    this._heldCharge = 0;
    this._heldStreamBytes = 0;
  }

  /** The Sui address the client proved (null until it did). */
  get address() {
    return this.clientAddress;
  }

  get serverStaticKey() {
    return this.staticKey.publicKey;
  }

  /** The client's X25519 static key (IK: from message 1; XX: from message 3). */
  get clientStaticKey() {
    return this.noise?.remoteStatic ?? null;
  }

  /** Runs the handshake up to the verdict: resolves to the connection once this side
   * accepted; rejects with ConnectionRefused when `decide` refused, HandshakeError when the
   * client failed its handshake or proof, TimeoutError past the handshake timeout. */
  accept() {
    return this.open();
  }

  _fail(message, code = CloseCode.HANDSHAKE_FAILED) {
    return this._failHandshake(message instanceof DTPError ? message : new HandshakeError(message, code));
  }

  /** The next handshake record: one that came early (kept in the backlog) or the next. */
  _takeHandshakeRecord() {
    const early = this._backlog ?? [];
    this._backlog = null;
    if (early.length > 0) {
      const [first, ...rest] = early;
      this._backlog = rest;
      return Promise.resolve([parseHeader(first), first]);
    }
    return this._nextHandshakeRecord();
  }

  async _handshake() {
    const [header, record] = await this._takeHandshakeRecord();
    if (header.kind !== RecordKind.HS_INIT || header.counter !== 0n) {
      throw this._fail(`expected HS_INIT with counter 0, got kind ${header.kind}`);
    }
    const body = record.subarray(HEADER_SIZE);
    this.firstHandshakeMessage = body;
    const pattern = PATTERNS[body[0]];
    if (!pattern) throw this._fail(`unknown pattern byte ${body[0]}`);
    this.pattern = pattern;
    const message1 = body.subarray(1);
    // the payload bound is checked before anything is decrypted (section 8.1)
    if (message1.length - NOISE_OVERHEAD[pattern][0] > MAX_PAYLOAD) throw this._fail('message 1 payload too large');
    let params;
    try {
      this.noise = new Responder({
        pattern,
        staticKey: this.staticKey,
        ...(this.options.ephemeralKey ? { ephemeralKey: this.options.ephemeralKey } : {}),
      });
      params = decodeParams(this.noise.readMessage1(message1));
    } catch (err) {
      throw this._fail(err instanceof HandshakeError ? err : new HandshakeError(String(err?.message ?? err)));
    }
    // a server answers the highest version it speaks up to the client's, and fails v = 0
    // (section 8.2); version 1 takes the Ed25519 proof alone
    if (params.v < 1) throw this._fail('the client speaks no transport version (v = 0)');
    this.version = Math.min(params.v, TRANSPORT_VERSION);
    if (pattern === 'IK' && !params.auth) throw this._fail('IK message 1 without the identity proof');
    if (pattern === 'XX' && params.auth) throw this._fail('XX message 1 carries a proof');
    if (pattern === 'IK') {
      // checked before answering: a failing proof gets no reply (section 8.4)
      try {
        this.clientAddress = checkProof(params.auth, proofMessage('IK', ikBinding(this.staticKey.publicKey, this.noise.re)), this.version);
      } catch (err) {
        throw this._fail(`identity proof rejected: ${err.message}`);
      }
      // a message 1 seen before is a replay: refused before anything is decided on it
      // (docs/protocol.md section 8, "Replayed IK first messages")
      if (this.replayGuard?.isReplay(this)) {
        this.options.logger?.info?.(`dtp: refused a replayed handshake first message (${this.clientAddress})`);
        throw this._fail('a replayed handshake first message');
      }
    }
    this.clientParams = params;
    this.peerParams = params;
    this.sendLimit = params.md;
    this.peerMaxStreams = params.ms;
    this._checkOpen();
    const ours = { ...this.localParams, v: this.version };
    this._sendRaw(handshakeRecord(RecordKind.HS_RESP, this.noise.writeMessage2(encodeParams(ours))));
    if (pattern === 'XX') {
      const [h3, r3] = await this._takeHandshakeRecord();
      if (h3.kind !== RecordKind.HS_FINAL || h3.counter !== 0n) {
        throw this._fail(`expected HS_FINAL with counter 0, got kind ${h3.kind}`);
      }
      const message3 = r3.subarray(HEADER_SIZE);
      if (message3.length - NOISE_OVERHEAD.XX[2] > MAX_PAYLOAD) throw this._fail('message 3 payload too large');
      try {
        this.noise.readMessage3(message3); // its payload is empty, and ignored (section 8.2)
      } catch (err) {
        throw this._fail(err instanceof HandshakeError ? err : new HandshakeError(String(err?.message ?? err)));
      }
    }
    const [receiveKey, sendKey] = this.noise.split();
    this.handshakeHash = this.noise.handshakeHash;
    this.protection = new RecordProtection(sendKey, receiveKey);
    this.state = State.AWAITING_VERDICT;
    this._awaitingAuth = pattern === 'XX';
    this._armIdle();
    const verdict = new Promise((resolve, reject) => {
      this._verdictWaiter = { resolve, reject };
    });
    verdict.catch(() => {});
    if (pattern === 'IK') this._decide();
    // records that came behind the last handshake message: the XX AUTH, early data
    const early = this._backlog ?? [];
    this._backlog = null;
    for (const r of early) this._onRecord(r);
    await verdict;
  }

  async _decide() {
    let verdict;
    try {
      const decide = this.options.decide;
      verdict = decide
        ? await decide({ address: this.clientAddress, pattern: this.pattern, params: this.clientParams, clientStatic: this.clientStaticKey })
        : true;
    } catch (err) {
      this.options.logger?.warn?.('dtp: the decide hook failed', err);
      this._closeWith(CloseCode.INTERNAL_ERROR, 'the server failed to decide');
      return;
    }
    if (this.state !== State.AWAITING_VERDICT) return; // closed meanwhile
    if (verdict === true || verdict === undefined || verdict === null) {
      this._acceptClient();
      return;
    }
    const code = verdict.code ?? CloseCode.REFUSED;
    const reason = verdict.reason ?? 'refused';
    // a refusal is a CLOSE under the transport keys; what the client sent is discarded
    this._held = [];
    this._end(new ConnectionRefused(code, reason), { sendClose: true, code, reason });
  }

  _acceptClient() {
    this.state = State.OPEN;
    this.replayGuard?.accepted(this);
    this._sendFrames([frame(FrameType.CONTROL, { a: CONTROL_ACCEPT })]);
    if (this.pattern === 'IK' && this.localParams.ms >= 1 && this.nextPeerStream === 0) {
      // the ACCEPT opens the client's stream 0 on both sides, unannounced (section 10.1)
      this._streamFor(0, true);
    }
    // what the client sent before the verdict reaches the application now, in order
    const held = this._held;
    this._held = [];
    for (const f of held) {
      if (this.state === State.CLOSED) break;
      try {
        super._onFrame(f);
      } catch (err) {
        this._protocolFailure(err);
        break;
      }
    }
    const waiter = this._verdictWaiter;
    this._verdictWaiter = null;
    if (this.state !== State.CLOSED) {
      this._pump();
      waiter?.resolve();
    }
  }

  _onFrame(f) {
    if (this._awaitingAuth) {
      // XX: nothing but ACK, PADDING, PING and CLOSE ahead of the AUTH (section 8.4)
      if (f.type === FrameType.CONTROL && Number(f.a) === CONTROL_AUTH) {
        this._onAuth(f.data);
        return;
      }
      if (f.type === FrameType.PADDING || f.type === FrameType.PING || f.type === FrameType.ACK) return;
      if (f.type !== FrameType.CLOSE) throw new ProtocolError('AUTH', `frame ${f.type} ahead of the AUTH`);
    } else if (this.state === State.AWAITING_VERDICT && !IMMEDIATE.has(f.type)) {
      if (f.type === FrameType.CONTROL && Number(f.a) < 16) {
        this._onControl(Number(f.a), f.data); // AUTH, ACCEPT, reserved: a violation now
        return;
      }
      this._hold(f);
      return;
    }
    super._onFrame(f);
  }

  /** Holds a frame until the verdict, within the charge of section 8.5. */
  _hold(f) {
    const isStream = STREAM_FRAMES.has(f.type);
    const charge = HELD_EVENT_CHARGE + (isStream ? 0 : (f.data?.length ?? 0));
    if (this._heldCharge + charge > this.localParams.md) {
      if (f.type === FrameType.DATAGRAM) return; // dropped, as a full carrier would
      throw new ProtocolError('VERDICT', 'too much held before the verdict');
    }
    if (isStream && f.data) {
      // stream bytes are bounded by the connection's window even while held
      this._heldStreamBytes += f.data.length;
      if (this._heldStreamBytes > this.receiveLimit) {
        throw new ProtocolError('FLOW', 'beyond the connection\'s limit', CloseCode.FLOW_CONTROL_ERROR);
      }
    }
    this._heldCharge += charge;
    this._held.push(f);
  }

  _onAuth(body) {
    this._awaitingAuth = false;
    try {
      this.clientAddress = checkProof(body, proofMessage('XX', this.handshakeHash), this.version);
    } catch (err) {
      // a proof that fails is HANDSHAKE_FAILED, not a verdict (section 8.4)
      const error = new HandshakeError(`identity proof rejected: ${err.message}`, CloseCode.HANDSHAKE_FAILED);
      this._closeWith(CloseCode.HANDSHAKE_FAILED, error.message, error);
      return;
    }
    this._decide();
  }

  _onControl(kind, body) {
    if (kind === CONTROL_AUTH) throw new ProtocolError('AUTH', this.pattern === 'IK' ? 'an AUTH in IK' : 'a second AUTH');
    if (kind === CONTROL_ACCEPT) throw new ProtocolError('ACCEPT', 'an ACCEPT from the client');
    if (kind < 16) throw new ProtocolError('CONTROL', `reserved CONTROL kind ${kind}`);
    this.oncontrol?.(kind, body);
  }

  _peerClosed(code, reason) {
    const error = new ConnectionClosed(code, reason, true);
    this._end(error, { sendClose: false, byPeer: true, code, reason });
  }

  /** Opens a stream of the server's (odd IDs), once the client is accepted: a server sends
   * no stream frame before its ACCEPT (section 8.5). */
  async openStream() {
    this._checkOpen();
    if (this.state !== State.OPEN) throw new Error('a server opens streams once it accepted the client');
    // announced at once (an empty STREAM frame), as section 12's server does: a server's
    // stream is opened for the client to read
    const stream = await super.openStream();
    this._announce(stream);
    return stream;
  }

  close(code = CloseCode.NO_ERROR, reason = '') {
    if (this.state === State.AWAITING_VERDICT && code === CloseCode.NO_ERROR) {
      // a server that shuts down before deciding says so with HANDSHAKE_FAILED (section 11)
      code = CloseCode.HANDSHAKE_FAILED;
      reason ||= 'the server closed before deciding';
    }
    return super.close(code, reason);
  }

  get usage() {
    // what the client used, as a paid server meters it (docs/escrow.md 6.1)
    return { bytes: this.sentTotal + this.receivedTotal + this.datagramBytes, requests: this._requests(this.peerStreamsOpened) };
  }

  get peerStreamsOpened() {
    return this.nextPeerStream / 2;
  }
}
