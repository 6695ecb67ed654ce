// Serving DTP from a page: a browser cannot listen on a port, so its server side is
// reached through a relay (docs/web-frontend.md, "A server in the page"). The page keeps
// one WebSocket open to the relay's listening path; the relay pairs it with the next
// client that connects to the service's path and copies the binary messages both ways,
// unchanged -- the records are end to end, so the relay sees only ciphertext and the
// handshake's clear parts. The page learns it was paired from the first message (the
// client's HS_INIT), runs a ServerConnection on that WebSocket and opens the next one.

import { ReplayGuard } from './replay-guard.js';
import { ServerConnection } from './server.js';
import { SUBPROTOCOL, WebSocketCarrier } from './websocket.js';

/**
 * Runs the server side of DTP on an open WebSocket (`ws`, subprotocol "dtp.v1" agreed)
 * whose first message is the client's first record, or is still to come. Resolves to the
 * accepted ServerConnection (options as ServerConnection's).
 *
 * It makes no replay guard: a server built on it passes one shared `replayGuard` (a
 * ReplayGuard per server, shared by all its connections) in `options`, or a replayed IK
 * first message is not refused (serveThroughRelay makes one for its connections).
 */
export function acceptWebSocket(ws, options, firstMessage = null) {
  const carrier = new WebSocketCarrier(ws);
  const connection = new ServerConnection(carrier, options);
  carrier.connection = connection;
  const accepted = connection.accept();
  if (firstMessage !== null) carrier._onMessage(firstMessage);
  return accepted;
}

/**
 * Serves DTP through a relay at `url` (ws:// or wss://, the relay's listening path for
 * this service). `onConnection(connection)` is called with each accepted
 * ServerConnection; a client that fails its handshake or is refused goes to `onError`
 * (options.onError, optional). Options as ServerConnection's (a ReplayGuard made for
 * this server unless `replayGuard` is given, or null), plus `WebSocket` (the class;
 * the global one by default) and `retryMs` (1000: the wait before reopening a listening
 * WebSocket the relay closed). Resolves, once the first listening WebSocket is open, to
 * `{close()}`, which stops listening (connections already accepted go on).
 */
export async function serveThroughRelay(url, options, onConnection) {
  // one replay guard for every connection this server accepts (ServerConnection's
  // `replayGuard`: a replayed IK first message is refused); null turns it off
  if (options.replayGuard === undefined) options = { ...options, replayGuard: new ReplayGuard() };
  const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
  if (!WebSocketImpl) throw new TypeError('no WebSocket here: pass options.WebSocket');
  const retryMs = options.retryMs ?? 1000;
  let stopped = false;
  let idle = null;
  let retry = null;

  const listen = () => new Promise((resolve, reject) => {
    const ws = new WebSocketImpl(url, SUBPROTOCOL);
    ws.binaryType = 'arraybuffer';
    let paired = false;
    const onMessage = (event) => {
      paired = true;
      ws.removeEventListener('message', onMessage);
      if (idle === ws) idle = null;
      if (!stopped) openNext();
      acceptWebSocket(ws, options, event.data).then(
        (connection) => onConnection(connection),
        (err) => options.onError?.(err),
      );
    };
    ws.addEventListener('message', onMessage);
    ws.addEventListener('open', () => {
      if (ws.protocol !== SUBPROTOCOL) {
        ws.close(1002);
        reject(new Error(`the relay did not agree to "${SUBPROTOCOL}"`));
        return;
      }
      if (stopped) ws.close(1000);
      resolve(ws);
    });
    ws.addEventListener('close', () => {
      reject(new Error(`the relay at ${url} closed the listening WebSocket`));
      if (!paired && idle === ws) {
        idle = null;
        if (!stopped) retry = setTimeout(openNext, retryMs);
      }
    });
    idle = ws;
  });

  const openNext = () => {
    retry = null;
    listen().catch((err) => options.onError?.(err));
  };

  await listen();
  return {
    close() {
      stopped = true;
      clearTimeout(retry);
      if (idle) idle.close(1000);
      idle = null;
    },
  };
}
