"""A connect that fails while its handshake is set up (after the carrier connected)
closes the carrier: no socket is left for the garbage collector (a ResourceWarning,
an error in this suite).

A connection whose peer stopped answering ends with ConnectionLost, not with a
TimeoutError: every later call raises it at once, and a read loop that treats its own
read timeouts as "nothing yet, go on" (``except TimeoutError: continue``) spun on it
for good."""

from __future__ import annotations

import gc
import time
from dataclasses import replace

import pytest

import dtp.socket
from dtp.errors import ConnectionLost, HandshakeError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig


def test_a_server_key_noise_cannot_use_fails_the_connect_and_closes_the_carrier() -> None:
    identity = HostIdentity.generate()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server:
        # an all-zero X25519 key: the IK handshake's first DH fails as it starts
        with pytest.raises(HandshakeError):
            dtp.socket.create_connection(server.address, timeout=5, server_key=bytes(32))
        gc.collect()  # an unclosed carrier would warn here


SERVER_ID = HostIdentity.generate()


def test_a_read_loop_on_a_peer_that_stopped_answering_ends() -> None:
    config = ConnectionConfig(identity=HostIdentity.generate(), is_client=True)
    config = replace(config, idle_timeout=0.5, keepalive_interval=0.1)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:
        client = dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key, config=config
        )
        peer, _ = server.accept(timeout=10)
        peer._engine.lock.acquire()  # the server goes silent: no reads, no keepalives
        try:
            client.settimeout(0.05)
            read_timeouts = 0
            deadline = time.monotonic() + 10
            with pytest.raises(ConnectionLost, match="stopped answering"):
                while time.monotonic() < deadline:
                    try:
                        client.recv(100)
                    except TimeoutError:
                        read_timeouts += 1  # its own read timeout: nothing yet
                        continue
            assert 0 < read_timeouts < 1000  # the loop waited, then ended
            with pytest.raises(ConnectionLost):
                client.recv(100)
        finally:
            peer._engine.lock.release()
            client.close()
            peer.abort()
