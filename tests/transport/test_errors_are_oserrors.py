"""Code written for sockets catches DTP's connection failures: ``ConnectionClosed``
(a write after the peer's close, a close with an error code) and ``HandshakeError``
(as a TLS handshake's failure, ``ssl.SSLError``, is an OSError) are ConnectionErrors,
as ``ConnectionLost``, ``ConnectionRefused`` and ``DTPTimeoutError`` already were."""

from __future__ import annotations

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed, DTPError, HandshakeError, PaymentError, PaymentRequired
from dtp.identity.keys import HostIdentity

SERVER_ID = HostIdentity.generate()


def test_a_write_after_the_peers_close_is_an_oserror() -> None:
    with (
        dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server,
        dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key
        ) as client,
    ):
        peer, _ = server.accept(timeout=10)
        peer.abort("going away")  # a close with an error code
        with pytest.raises(OSError) as caught:
            client.recv(10)
        assert isinstance(caught.value, ConnectionClosed)
        assert isinstance(caught.value, ConnectionError)
        with pytest.raises(OSError) as caught:
            client.sendall(b"x")
        assert isinstance(caught.value, DTPError)


def test_a_handshake_with_the_wrong_server_key_is_an_oserror() -> None:
    other = HostIdentity.generate()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:
        with pytest.raises(OSError) as caught:
            dtp.socket.create_connection(server.address, timeout=5, server_key=other.noise_public)
        assert isinstance(caught.value, HandshakeError)


def test_the_errors_keep_their_message_and_fields() -> None:
    closed = ConnectionClosed("bye", 5)
    assert (str(closed), closed.reason, closed.code) == ("bye (code 5)", "bye", 5)
    assert closed.errno is None
    paid = PaymentRequired("no receipt", 0x1403)
    assert isinstance(paid, ConnectionError) and isinstance(paid, PaymentError)
    assert str(HandshakeError("bad proof")) == "bad proof"
