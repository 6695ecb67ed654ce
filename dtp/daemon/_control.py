"""The daemon's control socket, ``<state_dir>/control.sock``: a Unix stream socket (mode
0600, in the state directory only its user may enter) on which the running daemon
answers HTTP ``GET`` requests as on its metrics address (:mod:`dtp.daemon._web`).
``dtp status`` reads ``/status.json`` there: the counters as they are now, not as the
status file last saved them.

This module holds the socket's paths and its client side (the standard library only:
``dtp status`` imports it); the server is :class:`dtp.daemon._web.StatusEndpoint`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["bind_unix", "connect_unix", "unix_get"]

#: sun_path holds 108 bytes on Linux, the terminating NUL included.
_SUN_PATH = 107


def _unix_socket(path: Path, use: Callable[[socket.socket, str], None]) -> socket.socket:
    """A Unix stream socket ``use``d (bound or connected) on a name for ``path`` that fits
    a socket address: itself, or, when too long, the same file reached through
    ``/proc/self/fd/N`` of a descriptor of its directory (closed once used)."""
    fd = None
    name = str(path)
    if len(os.fsencode(path)) > _SUN_PATH:
        fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        name = f"/proc/self/fd/{fd}/{path.name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        use(sock, name)
    except BaseException:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix stream socket at ``path``, mode 0600."""

    def listen(sock: socket.socket, name: str) -> None:
        sock.bind(name)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)

    return _unix_socket(path, listen)


def connect_unix(path: Path, timeout: float) -> socket.socket:
    """A Unix stream socket connected to ``path`` (OSError when no one listens)."""

    def connect(sock: socket.socket, name: str) -> None:
        sock.settimeout(timeout)
        sock.connect(name)

    return _unix_socket(path, connect)


def unix_get(path: Path, target: str, timeout: float = 2.0) -> bytes:
    """``GET target`` over the Unix socket ``path``: the body of a 200 answer. Raises
    OSError when the daemon does not answer (no socket, refused, timed out) or answers
    with another status."""
    with connect_unix(path, timeout) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: dtp\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        raise OSError(f"no answer from {path}")
    line = head.split(b"\r\n", 1)[0]
    status = line.split(b" ")
    if len(status) < 2 or status[1] != b"200":
        raise OSError(f"{path} answered {line.decode('latin-1')}")
    return body
