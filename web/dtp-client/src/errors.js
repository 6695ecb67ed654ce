// Typed errors: every failure the client reports is one of these, with the close code of
// docs/protocol.md section 11 where one applies.

export const CloseCode = Object.freeze({
  NO_ERROR: 0,
  INTERNAL_ERROR: 1,
  PROTOCOL_VIOLATION: 2,
  FRAME_ENCODING_ERROR: 3,
  FLOW_CONTROL_ERROR: 4,
  DECRYPT_ERROR: 7,
  REPLAY_DETECTED: 8,
  IDLE_TIMEOUT: 9,
  HANDSHAKE_FAILED: 10,
  REFUSED: 11,
  CONNECTION_LOST: 13,
  APPLICATION: 0x1000,
});

export class DTPError extends Error {
  constructor(message, code = undefined) {
    super(message);
    this.name = this.constructor.name;
    if (code !== undefined) this.code = code;
  }
}

/** A frame, record or parameter map that breaks docs/protocol.md; `detail` names the rule
 * (FRAME_TYPE, FRAME_SIZE, FRAME_VALUE, FRAME_TRUNCATED, VARINT, RECORD_KIND, ...). */
export class ProtocolError extends DTPError {
  constructor(detail, message, code = CloseCode.PROTOCOL_VIOLATION) {
    super(`${detail}: ${message}`, code);
    this.detail = detail;
  }
}

/** A record that fails authentication (section 4.2: no detail on purpose). */
export class DecryptionError extends DTPError {
  constructor() {
    super('record failed authentication', CloseCode.DECRYPT_ERROR);
  }
}

/** The handshake failed before the verdict (section 8.6). */
export class HandshakeError extends DTPError {
  constructor(message, code = CloseCode.HANDSHAKE_FAILED) {
    super(message, code);
  }
}

/** The server's verdict was no: CLOSE 11 or an application code (section 8.5). */
export class ConnectionRefused extends DTPError {
  constructor(code, reason) {
    super(`refused (${code}): ${reason}`, code);
    this.reason = reason;
  }
}

/** The connection ended: a CLOSE from either side, or the carrier went away
 * (code CONNECTION_LOST, a local code that never goes on the wire). */
export class ConnectionClosed extends DTPError {
  constructor(code, reason, byPeer) {
    super(`connection closed (${code})${reason ? `: ${reason}` : ''}`, code);
    this.reason = reason;
    this.byPeer = byPeer;
  }
}

/** The peer reset a stream (RESET_STREAM), with its application error code. */
export class StreamReset extends DTPError {
  constructor(streamId, errorCode) {
    super(`stream ${streamId} was reset by the peer (error code ${errorCode})`, errorCode);
    this.streamId = streamId;
  }
}

export class TimeoutError extends DTPError {}
