// The WebSocket carrier (docs/protocol.md section 13): subprotocol "dtp.v1", one record
// per binary message, in order (the connection runs as over TCP).

import { asBytes } from './bytes.js';
import { Connection } from './connection.js';
import { connectionCid } from './ids.js';
import { CloseCode, HandshakeError, TimeoutError } from './errors.js';
import { HEADER_SIZE, MAX_RECORD } from './record.js';

export const SUBPROTOCOL = 'dtp.v1';
export const WS_CLOSE = Object.freeze({ NORMAL: 1000, PROTOCOL: 1002, UNSUPPORTED: 1003, TOO_BIG: 1009 });

export class WebSocketCarrier {
  constructor(ws) {
    this.ws = ws;
    this.connection = null;
    this.closing = false;
    ws.binaryType = 'arraybuffer';
    ws.addEventListener('message', (event) => this._onMessage(event.data));
    ws.addEventListener('close', (event) => {
      this.connection?._onCarrierClosed(`WebSocket closed (${event.code}${event.reason ? `: ${event.reason}` : ''})`);
    });
    ws.addEventListener('error', () => {
      this.connection?._onCarrierClosed('WebSocket error');
    });
  }

  send(record) {
    if (this.ws.readyState !== 1) throw new Error('the WebSocket is not open');
    this.ws.send(record);
  }

  /** Ends the carrier: the CLOSE record (if any) went out before, then close 1000. */
  close(code = WS_CLOSE.NORMAL, reason = '') {
    if (this.closing) return;
    this.closing = true;
    if (this.ws.readyState === 0 || this.ws.readyState === 1) this.ws.close(code, reason);
  }

  _onMessage(data) {
    if (this.closing || !this.connection) return;
    if (typeof data === 'string') {
      this._breach(WS_CLOSE.UNSUPPORTED, 'a text message: records travel in binary messages');
      return;
    }
    const bytes = asBytes(data);
    if (bytes.length > MAX_RECORD) {
      this._breach(WS_CLOSE.TOO_BIG, `a message of ${bytes.length} bytes`);
      return;
    }
    const bodyLength = bytes.length >= HEADER_SIZE ? bytes[2] | (bytes[3] << 8) : -1;
    if (bytes.length !== HEADER_SIZE + bodyLength) {
      this._breach(WS_CLOSE.PROTOCOL, 'a message that is not exactly one record');
      return;
    }
    this.connection._onRecord(bytes);
  }

  /** A breach of section 13 ends the carrier with its WebSocket code; the DTP connection
   * ends as when a TCP connection fails (no CLOSE record). */
  _breach(code, why) {
    const connection = this.connection;
    this.close(code, why.slice(0, 120));
    connection?._onCarrierClosed(why);
  }
}

// The opening handshake is bounded by the connection's handshake timeout: the DTP
// handshake's timer starts once the WebSocket is open, and a server that accepts the
// TCP connection but never answers the upgrade would otherwise hold connect() for good.
function openWebSocket(url, WebSocketImpl, timeout) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocketImpl(url, SUBPROTOCOL);
    } catch (err) {
      reject(new HandshakeError(`cannot open ${url}: ${err.message}`));
      return;
    }
    ws.binaryType = 'arraybuffer';
    const timer = setTimeout(() => {
      cleanup();
      try {
        ws.close();
      } catch {
        // (closing a WebSocket still connecting may throw in some implementations)
      }
      // (a TimeoutError, as when the DTP handshake after it does not finish in time)
      reject(new TimeoutError(`the WebSocket upgrade to ${url} timed out (${timeout} ms)`,
        CloseCode.HANDSHAKE_FAILED));
    }, timeout);
    const onOpen = () => {
      cleanup();
      if (ws.protocol !== SUBPROTOCOL) {
        ws.close(WS_CLOSE.PROTOCOL);
        reject(new HandshakeError(`the server did not agree to "${SUBPROTOCOL}"`));
        return;
      }
      resolve(ws);
    };
    const onFail = (event) => {
      cleanup();
      reject(new HandshakeError(`the WebSocket to ${url} failed${event?.code ? ` (${event.code})` : ''}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      ws.removeEventListener('open', onOpen);
      ws.removeEventListener('error', onFail);
      ws.removeEventListener('close', onFail);
    };
    ws.addEventListener('open', onOpen);
    ws.addEventListener('error', onFail);
    ws.addEventListener('close', onFail);
  });
}

/**
 * Connects to a DTP service at a ws:// or wss:// URL and runs the handshake: resolves to
 * an accepted Connection (see Connection for the options; `WebSocket` picks the WebSocket
 * class, the global one by default).
 */
export async function connect(url, options = {}) {
  const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
  if (!WebSocketImpl) throw new TypeError('no WebSocket here: pass options.WebSocket');
  // (a connection ID in a form it does not take is refused before anything is opened)
  if (options.cid !== undefined && options.cid !== null) options = { ...options, cid: connectionCid(options.cid) };
  const ws = await openWebSocket(url, WebSocketImpl, options.handshakeTimeout ?? 10000);
  const carrier = new WebSocketCarrier(ws);
  let connection;
  try {
    connection = new Connection(carrier, options);
  } catch (err) {
    carrier.close();
    throw err;
  }
  carrier.connection = connection;
  return connection.open();
}
