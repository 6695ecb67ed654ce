"""Raw client connections at a server's admission (dtp.transport.handshake_gate): silent ones, and
half-handshakes -- a genuine first handshake record, then nothing -- which hold a
handshake slot while the server waits for their next message."""

from __future__ import annotations

import os
import socket
import time

from dtp.connection import Connection, ConnectionConfig
from dtp.keys import HostIdentity

_CLIENT = HostIdentity.generate()


def first_record(server_key: bytes | None = None, identity: HostIdentity | None = None) -> bytes:
    """A genuine client's first handshake record: Noise XX, or IK to ``server_key`` (its
    proof signed by ``identity``, a fixed one by default)."""
    config = ConnectionConfig(
        identity=identity or _CLIENT, is_client=True, server_static=server_key
    )
    now = time.monotonic()
    conn = Connection(config, ephemeral_key=os.urandom(32), now=now)
    return bytes(conn.data_to_send(now))


def silent(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A raw TCP connection from ``source`` that never sends a byte."""
    return socket.create_connection(address, timeout=5, source_address=(source, 0))


def half_handshake(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A raw TCP connection from ``source`` that sends a genuine XX first record and
    then nothing: the server answers it and holds a handshake slot for its next
    message (until it gives way, or its handshake times out)."""
    sock = silent(address, source)
    sock.sendall(first_record())
    return sock
