"""Raw client connections at a server's admission (dtp.transport._admission): silent ones, and
half-handshakes -- a genuine first handshake record, then nothing -- which hold a
handshake slot while the server waits for their next message; whether the server closed
one, and the echo handler of the servers they meet."""

from __future__ import annotations

import os
import socket
import time

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import Connection, ConnectionConfig

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


def closed_by_peer(sock: socket.socket, within: float = 2.0) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``within`` seconds (what
    it sends before, its handshake reply, is read and dropped)."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def idle(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A half-handshake: a raw TCP connection that sends a genuine first handshake
    record, then nothing (it holds a handshake slot until its handshake times out)."""
    return half_handshake(address, source)


def echo(sock: dtp.socket.DTPSocket) -> None:
    """A blocking server's handler: sends back what one ``recv`` gives."""
    sock.sendall(sock.recv(100))
