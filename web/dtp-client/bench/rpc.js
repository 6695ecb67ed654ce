// The browser side of bench/web_rows.py's ws_rpc_roundtrip: sequential JSON-RPC calls
// from this page, (a) through DTP on the WebSocket carrier, one stream a call as the dApp
// page makes them (open, the request, FIN, the whole answer), and (b) as plain JSON-RPC
// text messages on a wss:// WebSocket. Both send the same request bytes and check the
// same answer; each `*Calls(n)` resolves to the milliseconds its n calls took.

import { fromHex, fromUtf8, utf8 } from '../src/bytes.js';
import { ed25519Signer } from '../src/identity.js';
import { Payment, receiptKey } from '../src/receipt.js';
import { connect } from '../src/websocket.js';

const PARAMS = ['x'.repeat(64)];
let nextId = 0;
let dtp = null;
let paid = null;
let plain = null;

/** One call's request: the same JSON-RPC text both ways, a fresh id each time. */
function request() {
  nextId += 1;
  return JSON.stringify({ jsonrpc: '2.0', method: 'echo', params: PARAMS, id: nextId });
}

function check(text, id) {
  const answer = JSON.parse(text);
  if (answer.id !== id || !Array.isArray(answer.result) || answer.result[0] !== PARAMS[0]) {
    throw new Error(`a wrong answer: ${text.slice(0, 200)}`);
  }
}

/** Connects to the DTP service (IK, `seed` the test wallet) and holds stream 0, which a
 * dtp.aio service reads as the connection's life. */
export async function openDtp(url, serverKey, seed) {
  dtp = await connect(url, { signer: ed25519Signer(fromHex(seed)), serverKey });
  dtp.first = await dtp.openStream();
  return dtp.address;
}

export async function dtpCalls(n) {
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const stream = await dtp.openStream();
    // (the request's text, as the plain calls hand theirs to send(): the stream writes
    // its UTF-8)
    await stream.end(request());
    check(fromUtf8(await stream.readAll()), nextId);
  }
  return performance.now() - start;
}

/** Connects to the paid DTP service (IK, `seed` the test wallet) on the ledger connection
 * `cid` its wallet opened, and pays its calls with `Payment`: `options` is {scope, sla,
 * deposit, sessionSeed (hex: the escrow's receipt key), every (Payment's, or absent: its
 * default)}. Holds stream 0 as openDtp does. */
export async function openDtpPaid(url, serverKey, seed, cid, options) {
  const connection = await connect(url, { signer: ed25519Signer(fromHex(seed)), serverKey, cid, port: options.port });
  connection.first = await connection.openStream();
  paid = new Payment(connection, {
    scope: options.scope,
    sla: options.sla,
    deposit: BigInt(options.deposit),
    key: receiptKey(options.sessionSeed),
    ...(options.every ? { every: options.every } : {}),
  });
  paid.receipts = 0;
  paid.onreceipt = () => {
    paid.receipts += 1;
  };
  return connection.address;
}

/** n paid calls, each with `Payment.request` (a stream a call, as dtpCalls). */
export async function dtpPaidCalls(n) {
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const body = request();
    check(fromUtf8(await paid.request(utf8(body))), nextId);
  }
  return performance.now() - start;
}

/** Ends the paid connection (its final receipt, then CLOSE): {requests, receipts}. */
export async function closePaid() {
  const connection = paid.connection;
  await connection.first.end();
  await paid.close();
  const { requests } = connection.usage;
  return { requests, receipts: paid.receipts };
}

/** Opens the plain JSON-RPC WebSocket (wss://). */
export function openPlain(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onopen = () => {
      plain = { ws, waiter: null };
      ws.onmessage = (event) => {
        const waiter = plain.waiter;
        plain.waiter = null;
        waiter?.(event.data);
      };
      resolve(url);
    };
    ws.onerror = () => reject(new Error(`the WebSocket to ${url} failed`));
  });
}

export async function plainCalls(n) {
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const answer = new Promise((resolve) => {
      plain.waiter = resolve;
    });
    plain.ws.send(request());
    check(await answer, nextId);
  }
  return performance.now() - start;
}

export async function closeAll() {
  if (dtp) {
    await dtp.first.end();
    await dtp.close();
    dtp = null;
  }
  if (plain) {
    plain.ws.close();
    plain = null;
  }
}

/** (for profiling: the DTP connection) */
export function _dtp() {
  return dtp;
}

/** (for profiling: the paid connection's Payment) */
export function _paid() {
  return paid;
}
