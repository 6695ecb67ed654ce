"""A connect that fails while its handshake is set up (after the carrier connected)
closes the carrier: no socket is left for the garbage collector (a ResourceWarning,
an error in this suite)."""

from __future__ import annotations

import gc

import pytest

import dtp.socket
from dtp.errors import HandshakeError
from dtp.keys import HostIdentity


def test_a_server_key_noise_cannot_use_fails_the_connect_and_closes_the_carrier() -> None:
    identity = HostIdentity.generate()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server:
        # an all-zero X25519 key: the IK handshake's first DH fails as it starts
        with pytest.raises(HandshakeError):
            dtp.socket.create_connection(server.address, timeout=5, server_key=bytes(32))
        gc.collect()  # an unclosed carrier would warn here
