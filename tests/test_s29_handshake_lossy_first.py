"""On a lossy carrier, a message 1 that Noise reads but whose payload is refused is
dropped, not fatal.

The keep_state read drops a forged or damaged handshake message so that the genuine one
(or its resend) can still complete the handshake -- but only when Noise itself refuses
it. XX message 1 is not authenticated at all, and an IK one only shows that its sender
knows the server's key: a damaged transport-parameter payload in either read cleanly,
and then failed the connection at once (a second reader's repro: a bit flipped in an XX
message 1's payload, "peer speaks DTP transport version 0"). The server now forgets such
a message 1 (Handshake.unread_first_message) and waits for the genuine one. Over TCP it
still ends the connection.
"""

from __future__ import annotations

import os

import pytest

from dtp._types import REC_HS_INIT
from dtp.connection import CloseCode, ConnState
from dtp.crypto import Handshake
from dtp.errors import HandshakeError
from tests.test_connection import SERVER_ID, make_pair

#: a byte of XX message 1's payload (after the 12-byte record header, the pattern id and
#: the 32-byte ephemeral key): flipped, the transport parameters no longer parse
PAYLOAD_BYTE = 12 + 1 + 32 + 3


def _damaged(message: bytes) -> bytes:
    bad = bytearray(message)
    bad[PAYLOAD_BYTE] ^= 0x01
    return bytes(bad)


def test_a_damaged_xx_message_1_is_dropped_on_a_lossy_carrier() -> None:
    client, server = make_pair(ik=False, reliable_carrier=False)
    (m1,) = client.datagrams_to_send(0.0)
    server.receive_datagram(_damaged(m1), 0.0)
    assert server.state is ConnState.SERVER_WAIT and not server.closed
    assert server.datagrams_to_send(0.0) == []  # not answered
    server.receive_datagram(m1, 0.0)
    assert server.state is ConnState.SERVER_FINAL
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    assert not client.closed and client.state is not ConnState.CLIENT_HELLO  # message 2 read


def test_the_same_message_ends_a_tcp_handshake() -> None:
    client, server = make_pair(ik=False)
    server.receive_data(_damaged(client.data_to_send(0.0)), 0.0)
    term = server.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED


def test_an_ik_message_1_without_its_proof_is_dropped_on_a_lossy_carrier() -> None:
    genuine, server = make_pair(reliable_carrier=False)
    # what anyone holding the server's key can send: valid Noise, no identity proof (the
    # server's own parameters: no "auth")
    forger = Handshake.initiator(
        os.urandom(32), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    body = forger.write_message(server._transport_params())
    forged = bytes([REC_HS_INIT, 0]) + len(body).to_bytes(2, "little") + bytes(8) + body
    server.receive_datagram(forged, 0.0)
    assert server.state is ConnState.SERVER_WAIT and not server.closed
    (m1,) = genuine.datagrams_to_send(0.0)
    server.receive_datagram(m1, 0.0)
    assert server.state is ConnState.SERVER_DECIDING
    assert server.peer_address == genuine.config.identity.sui_address


def test_unread_first_message_only_after_message_1() -> None:
    responder = Handshake.responder(SERVER_ID.noise_private_bytes(), os.urandom(32))
    with pytest.raises(HandshakeError):
        responder.unread_first_message()  # nothing read
    initiator = Handshake.initiator(
        os.urandom(32), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    m1 = initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        initiator.unread_first_message()  # not a responder
    responder.read_message(m1)
    assert responder.remote_static is not None
    responder.unread_first_message()
    assert responder.remote_static is None and responder.pattern is None
    again = Handshake.initiator(
        os.urandom(32), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    assert responder.read_message(again.write_message(b"hello")) == b"hello"
    responder.write_message(b"")
    assert responder.complete
    with pytest.raises(HandshakeError):
        responder.unread_first_message()  # wrote message 2 already
