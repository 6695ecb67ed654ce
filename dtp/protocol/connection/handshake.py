"""The handshake of a connection (:class:`_Handshake`): Noise handshake records and their
resends, the transport parameters, the client's identity proof, and the server's
verdict (accept, answer, refuse) with the events held until it."""

from __future__ import annotations

import logging
from typing import Any

import msgpack

from dtp.errors import ErrorCode, HandshakeError, LocalProtocolError, RemoteProtocolError
from dtp.identity.noise import PATTERN_IK, make_auth_proof, verify_auth_proof
from dtp.native import core as _core
from dtp.native.types import (
    FRAME_CONTROL,
    REC_DATA,
    REC_HS_FINAL,
    REC_HS_INIT,
    REC_HS_RESP,
    RawFrame,
)
from dtp.protocol.connection.base import _ConnectionState
from dtp.protocol.connection.config import (
    MAX_PENDING_EARLY_RECORDS,
    MIN_KEEPALIVE,
    TRANSPORT_VERSION,
    parse_params,
)
from dtp.protocol.events import (
    ConnectionAccepted,
    ControlReceived,
    DatagramReceived,
    Event,
    HandshakeCompleted,
    PeerAuthenticated,
    ReceiptReceived,
)
from dtp.protocol.state import CloseCode, ConnState, ControlKind, transition

# one logger for the package, by its name (docs/architecture.md lists it)
logger = logging.getLogger("dtp.protocol.connection")


class _Handshake(_ConnectionState):
    """The handshake of a :class:`~dtp.protocol.connection.core.Connection` (a mixin), and
    the authentication and verdict that follow it.

    Attributes of ``Connection.__init__`` it uses: ``config``, ``is_client``,
    ``_state``, ``_events``, ``_out``, ``_inbuf``, ``_last_received``, ``_keepalive``,
    ``_hs``, ``_hs_messages``, ``_hs_resend_at``, ``_hs_resend_interval``, ``_hs_init``,
    ``_send_aead``, ``_recv_aead``, ``lent_lane``, ``_early_records``, ``peer_static``,
    ``handshake_hash``, ``peer_address``, ``peer_public_key``, ``_auth_proof``,
    ``pattern``, ``streams``, ``_peer_params``, ``_conn_send_credit``, ``_ctrl``,
    ``_held_events``, ``_held_bytes``.
    """

    # ----------------------------------------------------------------------------------
    # the server's verdict

    def accept(self) -> None:
        """Server: let the authenticated client in (after PeerAuthenticated)."""
        if self.lent_lane is not None:
            self._take_back()
        if self.is_client or self._state not in (
            ConnState.AUTHENTICATING,
            ConnState.SERVER_DECIDING,
        ):
            raise LocalProtocolError("accept() is for a server whose client has authenticated")
        if self.peer_address is None:
            raise LocalProtocolError("the client has not proved its identity yet")
        if self._state is ConnState.SERVER_DECIDING:
            self._answer_hello()
            self._finish_handshake(ConnState.ESTABLISHED)
        else:
            self._state = transition(self._state, ConnState.ESTABLISHED)
        self._ctrl.append(RawFrame(FRAME_CONTROL, int(ControlKind.ACCEPT)))
        self._events.append(ConnectionAccepted(self.peer_address))
        self._events.extend(self._held_events)
        self._held_events.clear()
        self._open_first_stream()

    def answer(self) -> None:
        """Server, IK: send message 2 now, before the verdict, so that the client works
        on it (two Diffie-Hellman operations and the key derivation) while the server
        decides; :meth:`accept` or :meth:`refuse` then adds only the verdict. It gives
        the client nothing the verdict would not: a refusal sends message 2 as well, so
        that its reason travels under the connection's transport keys. Nothing happens in any other
        state (XX answers as the messages come)."""
        if self.is_client or self._state is not ConnState.SERVER_DECIDING:
            return
        self._answer_hello()
        self._finish_handshake(ConnState.AUTHENTICATING)

    def refuse(self, reason: str = "refused", code: int = CloseCode.REFUSED) -> None:
        """Server: turn the client away; it sees ConnectionRefused with ``reason``."""
        if self.lent_lane is not None:
            self._take_back()
        if self.is_client:
            raise LocalProtocolError("refuse() is for servers")
        self._held_events.clear()
        if self._state is ConnState.SERVER_DECIDING:
            # IK: the verdict goes out as a CLOSE right behind message 2, so that the
            # client reads the reason under the connection's transport keys
            self._answer_hello()
            self._finish_handshake(ConnState.AUTHENTICATING)
        self.close(code, reason)

    def _handle_late_handshake_record(self, now: float) -> None:
        batch = _core.parse_records(self._inbuf, max_records=1)
        if not batch.records:
            return
        record = batch.records[0]
        start = record.offset + 12
        body = bytes(self._inbuf[start : start + record.body_len])
        del self._inbuf[: 12 + record.body_len]
        if self.config.reliable_carrier:
            raise RemoteProtocolError("handshake record after the handshake", ErrorCode.ARG)
        # a lossy carrier repeated a handshake message: answer a repeated first message
        if (
            not self.is_client
            and record.kind == REC_HS_INIT
            and record.counter == 0
            and body == self._hs_init
        ):
            self._resend_handshake()

    def _resend_handshake(self) -> None:
        for kind, message in self._hs_messages:
            self._out.append(_core.write_record_header(kind, 0, len(message), 0) + message)

    def _process_handshake_records(self, now: float) -> bool:
        try:
            batch = _core.parse_records(self._inbuf, max_records=1)
        except RemoteProtocolError as exc:
            if self.config.reliable_carrier:
                raise
            # a datagram that does not parse (forged or damaged): dropped, like a
            # handshake message that fails Noise; the handshake goes on
            logger.debug("dropping a datagram that does not parse: %s", exc)
            self._inbuf = bytearray()  # rebind, not clear(): the parser's view may live on
            return False
        if not batch.records:
            return False
        record = batch.records[0]
        start = record.offset + 12
        body = bytes(self._inbuf[start : start + record.body_len])
        if record.kind == REC_DATA:
            # a lossy carrier may deliver the client's first DATA record before the
            # XX final message; hold a few, and reject them on ordered carriers
            if self.config.reliable_carrier:
                raise RemoteProtocolError("data before the handshake finished", ErrorCode.ARG)
            if len(self._early_records) < MAX_PENDING_EARLY_RECORDS:
                self._early_records.append(bytes(self._inbuf[: batch.consumed]))
            # else dropped, as lossy carriers drop what they cannot take: anyone can
            # forge unauthenticated records, and failing here let a few dozen of them
            # end a handshake in progress
            del self._inbuf[: batch.consumed]
            return True
        del self._inbuf[: batch.consumed]
        if record.counter != 0:
            # docs/protocol.md 8.1: a handshake record's counter is 0, like a reserved
            # field; anything else is a damaged or forged handshake message
            if self.config.reliable_carrier:
                raise HandshakeError(
                    f"handshake record with counter {record.counter} (it must be 0)"
                )
            logger.debug("dropping a handshake record with counter %d", record.counter)
            return True
        self._handle_handshake_message(record.kind, body, now)
        return True

    def _handle_handshake_message(self, kind: int, body: bytes, now: float) -> None:
        expected = {
            ConnState.SERVER_WAIT: REC_HS_INIT,
            ConnState.CLIENT_HELLO: REC_HS_RESP,
            ConnState.SERVER_FINAL: REC_HS_FINAL,
        }.get(self._state)
        if kind != expected:
            if not self.config.reliable_carrier:
                if not self.is_client and kind == REC_HS_INIT and body == self._hs_init:
                    self._resend_handshake()  # our reply was lost: the client repeats
                return  # any other stray repeat on a lossy carrier
            raise HandshakeError(f"unexpected handshake record kind {kind}")
        if self.config.reliable_carrier:
            payload = self._hs.read_message(body)
        else:
            # anyone can slip a forged or damaged message in before the genuine one: it
            # is dropped, the handshake left as it was for the genuine one (or its resend)
            try:
                payload = self._hs.read_message(body, keep_state=True)
            except HandshakeError as exc:
                logger.debug("dropping a handshake message that failed: %s", exc)
                return
        self._last_received = now  # an authentic message (lossy carriers wait for one)
        if kind == REC_HS_INIT:
            try:
                params = parse_params(payload, from_client=True)
                proof = params.pop("auth", None)
                if self._hs.pattern == PATTERN_IK:
                    if proof is None:
                        raise HandshakeError("IK message 1 carries no identity proof")
                    address = verify_auth_proof(proof, self._hs.auth_binding, early=True)
                elif proof is not None:
                    raise HandshakeError(
                        "an identity proof in XX message 1 (it goes after message 3)"
                    )
            except HandshakeError as exc:
                if self.config.reliable_carrier:
                    raise
                # Noise took it, but an XX message 1 is not authenticated at all (and an
                # IK one only says its sender knows our key): a forgery or damage must
                # not end the handshake the genuine message 1, or its resend, comes for
                logger.debug("dropping a handshake message 1 whose payload fails: %s", exc)
                self._hs.unread_first_message()
                return
            # only a copy of this very message is answered again (lossy carriers): any
            # other, which anyone can forge, would have us send message 2 on demand
            self._hs_init = body
            self._peer_params = params
            self.streams.send_window = params.get("msd", 0)
            if self._hs.pattern == PATTERN_IK:
                assert proof is not None
                self._authenticated(proof, address)
                self.peer_static = self._hs.remote_static
                # message 2 waits for the application's verdict (accept / refuse)
                self._state = transition(self._state, ConnState.SERVER_DECIDING)
                return
            reply = self._hs.write_message(self._transport_params())
            self._send_handshake(REC_HS_RESP, reply, now, resend=False)
            if self._hs.complete:
                self._finish_handshake(ConnState.AUTHENTICATING)
            else:
                self._state = transition(self._state, ConnState.SERVER_FINAL)
        elif kind == REC_HS_RESP:
            # before XX message 3, which carries our static key: an impostor gets nothing
            expected_key = self.config.expected_server_static
            if expected_key is not None and self._hs.remote_static != expected_key:
                raise HandshakeError("the server's static key is not the expected one")
            self._peer_params = parse_params(payload)
            self.streams.send_window = self._peer_params.get("msd", 0)
            if not self._hs.complete:
                final = self._hs.write_message(b"")
                self._hs_messages.clear()
                self._send_handshake(REC_HS_FINAL, final, now)
            else:
                self._hs_messages.clear()
                self._hs_resend_at = None
            self._finish_handshake(ConnState.AUTHENTICATING)
            if self.pattern == "XX":  # in IK the proof went in message 1
                proof = make_auth_proof(self.config.identity, self._hs.handshake_hash)
                self._ctrl.insert(0, RawFrame(FRAME_CONTROL, int(ControlKind.AUTH), 0, 0, proof))
        else:  # REC_HS_FINAL
            self._finish_handshake(ConnState.AUTHENTICATING)
        early, self._early_records = self._early_records, []
        for blob in early:
            self._inbuf[:0] = blob

    def _finish_handshake(self, new_state: ConnState) -> None:
        send_key, recv_key = self._hs.transport_keys()
        self._send_aead = _core.Aead(send_key)
        self._recv_aead = _core.Aead(recv_key)
        if self.config.reliable_carrier:
            # records come as they were sent (0, 1, 2, ...): one missing or moved was
            # removed or moved on the way, which a window of unseen counters would not
            # notice (an application CONTROL message, a DATAGRAM or a RESET_STREAM,
            # dropped from the byte stream without a trace)
            self._recv_aead.set_in_order()
        self.peer_static = self._hs.remote_static
        self.handshake_hash = self._hs.handshake_hash
        self.pattern = "IK" if self._hs.pattern == PATTERN_IK else "XX"
        params = self._peer_params
        self._conn_send_credit = params["md"]
        self.streams.peer_max = params["ms"]
        if self._keepalive:
            # a PING at half the peer's idle timeout, or a quiet connection (or one we
            # only send on, whose peer may answer nothing) dies at its end: the peer
            # hears nothing from us for our whole interval. Not below MIN_KEEPALIVE,
            # whatever the peer asks (a PING every millisecond would be its to order)
            peer_idle = params["it"] / 1000
            self._keepalive = min(self._keepalive, max(peer_idle / 2, MIN_KEEPALIVE))
        self._state = transition(self._state, new_state)
        assert self.peer_static is not None and self.handshake_hash is not None
        self._events.append(HandshakeCompleted(self.pattern, self.peer_static, self.handshake_hash))

    def _on_control(self, kind: int, data: bytes) -> None:
        lossy = not self.config.reliable_carrier
        if kind == ControlKind.AUTH:
            if lossy and self.peer_address is not None and data == self._auth_proof:
                return  # a retransmitted copy of the proof we already accepted
            if self.is_client or self.peer_address is not None:
                raise RemoteProtocolError("unexpected AUTH frame", ErrorCode.FRAME_VALUE)
            assert self.handshake_hash is not None
            self._authenticated(data, verify_auth_proof(data, self.handshake_hash))
        elif kind == ControlKind.ACCEPT:
            if lossy and self.is_client and self._state is ConnState.ESTABLISHED:
                return  # a retransmitted copy
            if not self.is_client or self._state is not ConnState.AUTHENTICATING:
                raise RemoteProtocolError("unexpected ACCEPT frame", ErrorCode.FRAME_VALUE)
            self._state = transition(self._state, ConnState.ESTABLISHED)
            self._events.append(ConnectionAccepted(None))
            self._open_first_stream()
        elif kind >= ControlKind.APPLICATION:
            self._deliver(ControlReceived(kind, data))
        else:
            raise RemoteProtocolError(f"unknown control kind {kind}", ErrorCode.FRAME_VALUE)

    def _open_first_stream(self) -> None:
        """IK, on acceptance: the client's stream 0 opens on both sides with no frame of
        its own, so that either side may send on it first (the server's first bytes can
        arrive in the client's very read that brings the ACCEPT)."""
        table = self.streams
        if self.pattern != "IK" or 0 in table.by_id:
            return
        if not self.is_client and table.peer_opened:
            # the client opened it already, with frames of its own (before the hooks
            # decided), and may have ended it since: opened again, the peer's next ID
            # was past it and the server's task died on an AssertionError
            return
        if self.is_client:
            table.open_first()
        elif table.local_max > 0:
            self._open_peer_streams_up_to(0)

    def _authenticated(self, proof: bytes, address: str) -> None:
        """The client's identity proof checked out: it is ``address``."""
        self.peer_address = address
        self.peer_public_key = proof[65:97]
        self._auth_proof = proof
        self._events.append(PeerAuthenticated(address, proof[65:97]))

    def _answer_hello(self) -> None:
        """Server, IK: message 2, which completes the handshake (sent with the verdict)."""
        reply = self._hs.write_message(self._transport_params())
        self._send_handshake(REC_HS_RESP, reply, None, resend=False)

    def _deliver(self, event: Event) -> None:
        """Application-facing events wait for accept() on the server."""
        if not self.is_client and self._state is ConnState.AUTHENTICATING:
            if isinstance(event, (DatagramReceived, ControlReceived, ReceiptReceived)):
                # flow control bounds held stream bytes, nothing these: a client could
                # fill the server's memory while the application decides on it
                self._held_bytes += len(event.data) + 64
            else:
                # every other event weighs too. Flow control bounds the held stream
                # bytes, not the events that carry them (one-byte frames held a hundred
                # times the connection window); and a stream the client opened, reset
                # and had us stop sending on is forgotten, which gives it a new stream
                # in MAX_STREAMS: unweighed, that cycle held three events per stream for
                # as long as the application decided, without end
                self._held_bytes += 64
            if self._held_bytes > self.config.connection_window:
                if isinstance(event, DatagramReceived):
                    return  # unreliable anyway: dropped, as a full carrier would
                raise RemoteProtocolError(
                    "too many frames before the server accepted", ErrorCode.FRAME_VALUE
                )
            self._held_events.append(event)
        else:
            self._events.append(event)

    # ----------------------------------------------------------------------------------
    # what the handshake sends

    def _transport_params(self) -> bytes:
        params: dict[str, Any] = {
            "v": TRANSPORT_VERSION,
            "md": self.config.connection_window,
            "msd": self.config.stream_window,
            "ms": self.config.max_streams,
            "it": int(min(self.config.idle_timeout * 1000, 2**62 - 1)),
        }
        if self.is_client:
            if self._hs.pattern == PATTERN_IK:
                params["auth"] = make_auth_proof(
                    self.config.identity, self._hs.auth_binding, early=True
                )
            # optional binding to a ledger connection: part of message 1's payload, which
            # only the holder of the ephemeral key the identity proof names can write
            if self.config.connection_id is not None:
                params["cid"] = bytes(self.config.connection_id)
            if self.config.port is not None:
                params["port"] = self.config.port
        packed: bytes = msgpack.packb(params)
        return packed

    def _send_handshake(
        self, kind: int, message: bytes, now: float | None, resend: bool = True
    ) -> None:
        record = _core.write_record_header(kind, 0, len(message), 0) + message
        self._out.append(record)
        if resend:
            self._hs_messages.append((kind, message))
        else:
            self._hs_messages = [(kind, message)]
        if not self.config.reliable_carrier and self.is_client:
            assert now is not None  # only the client resends on its own
            self._hs_resend_at = now + self._hs_resend_interval
