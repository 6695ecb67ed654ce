// A DTP client for web pages (and Node), written from docs/protocol.md: records (section
// 2), frames (3), record protection (4), the Noise IK/XX handshake with the client's
// identity proof by a wallet of any Sui scheme (8), streams (10), close (11), over the
// WebSocket carrier (13); and the receipts a paid service takes (docs/escrow.md 6). The server's side too (server.js:
// the Noise responder), served through a relay (relay.js), since a page cannot listen.

export { connect, WebSocketCarrier, SUBPROTOCOL } from './websocket.js';
export { Connection, State } from './connection.js';
export { Stream } from './stream.js';
export { ServerConnection } from './server.js';
export { acceptWebSocket, serveThroughRelay } from './relay.js';
export { ReplayGuard, DEFAULT_CAPACITY as REPLAY_GUARD_CAPACITY } from './replay-guard.js';
export {
  ed25519Signer, walletSigner, keypairSigner, suiAddress, personalMessageDigest, proofMessage, verifyProof, checkProof,
  checkProofOf, isEd25519Proof, MAX_PROOF_SIZE,
} from './identity.js';
export { checkSignature, InvalidSignature, SCHEMES, Flag as SignatureFlag } from './schemes.js';
export {
  CloseCode, DTPError, ProtocolError, DecryptionError, HandshakeError, ConnectionRefused, ConnectionClosed,
  StreamReset, TimeoutError,
} from './errors.js';
export { connectionCid, objectIdBytes } from './ids.js';
export { LocalLedgerBridge, BridgeError, signLocalTransaction, localTransactionSigner } from './local-ledger.js';
export {
  Payment, PaymentRequired, fee, receiptMessage, encodeReceipt, signReceipt, receiptKey, sessionKey, EVERY_MS,
  RECEIPT_VERSION, RECEIPT_MESSAGE_SIZE, RECEIPT_ENCODED_SIZE,
} from './receipt.js';
export { FrameType, encodeFrames, decodeFrames, frame } from './frames.js';
export { RecordKind, sealRecord, openRecord, parseHeader } from './record.js';
export { encodeParams, decodeParams, DEFAULT_PARAMS } from './params.js';
export { Initiator, Responder, ikBinding, keyPair, PROTOCOL_IK, PROTOCOL_XX, PROLOGUE } from './noise.js';
export { encodeVarint, decodeVarint } from './varint.js';
export { hex, fromHex, utf8 } from './bytes.js';
