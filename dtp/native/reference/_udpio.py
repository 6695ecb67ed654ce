"""Twin of dtp_core/udpio.c: a run of UDP datagrams sent one system call each."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

__all__ = ["send_datagram_run"]


def send_datagram_run(
    sock: socket.socket,
    datagrams: Sequence[bytes | bytearray | memoryview],
    address: tuple[str, int] | tuple[str, int, int, int] | None = None,
) -> tuple[int, int, int]:
    """Send ``datagrams`` on the UDP socket ``sock`` without waiting: to ``address``,
    or (None) to its connected peer. A datagram the kernel refuses (a full buffer, an
    ICMP error) is dropped and the rest still tried, as UDP drops it. Returns (how many
    were sent, their bytes, the errno of the last refused or 0 if none was)."""
    if sock.fileno() < 0:
        return 0, 0, errno.EBADF if datagrams else 0
    sent = nbytes = err = 0
    flags = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
    for data in datagrams:
        try:
            if address is None:
                sock.send(data, flags)
            else:
                sock.sendto(data, flags, address)
        except OSError as exc:
            err = exc.errno or 0
            continue
        sent += 1
        nbytes += len(data) if type(data) is bytes else memoryview(data).nbytes
    return sent, nbytes, err
