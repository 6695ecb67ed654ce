"""Twin of dtp_core/udpio.c: a run of UDP datagrams sent one system call each."""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Sequence
from typing import Any

__all__ = ["recv_datagram_run", "same_source", "send_datagram_run", "takes_gso"]

#: The largest UDP payload a read takes whole (IPv4's limit; IPv6 jumbograms aside)
MAX_UDP_READ = 65535
_SOL_UDP = 17
_UDP_SEGMENT = 103  # (Linux 4.18; not in every Python's socket module)


def takes_gso(sock: socket.socket) -> bool:
    """Whether ``sock`` takes a segmented send (``UDP_SEGMENT``: a UDP socket of a kernel
    that knows the option; not a Unix datagram socket, not a closed one). The answer is
    the socket's protocol's, for its life: the C core's sends ask it once per kind of
    socket (the sends here go one datagram a call, segmented never)."""
    if sock.fileno() < 0:
        return False
    try:
        sock.getsockopt(_SOL_UDP, _UDP_SEGMENT)
    except OSError:
        return False
    return True


def send_datagram_run(
    sock: socket.socket,
    datagrams: Sequence[bytes | bytearray | memoryview],
    address: tuple[str, int] | tuple[str, int, int, int] | None = None,
) -> tuple[int, int, int]:
    """Send ``datagrams`` on the UDP socket ``sock``: to ``address``, or (None) to its
    connected peer. A datagram the kernel refuses (a full buffer, an ICMP error) is
    dropped and the rest still tried, as UDP drops it; a full buffer refuses one only
    on a socket that does not block (non-blocking, or with a timeout), a blocking one
    waits for room, as its ``send`` does. Returns (how many were sent, their bytes, the
    errno of the last refused or 0 if none was)."""
    if sock.fileno() < 0:
        return 0, 0, errno.EBADF if datagrams else 0
    sent = nbytes = err = 0
    # (no MSG_DONTWAIT: the socket's own mode decides, as the C core's sendmmsg)
    flags = socket.MSG_NOSIGNAL
    # (a socket with a timeout waits for room that long before its send, whatever the
    # flags: a full buffer is then EAGAIN, as the C core's non-blocking fd makes it)
    timed = bool(sock.gettimeout())
    for data in datagrams:
        try:
            if timed and not select.select([], [sock], [], 0)[1]:
                err = errno.EAGAIN
                continue
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


def recv_datagram_run(
    sock: socket.socket, limit: int, sources: bool = False
) -> tuple[list[bytes], list[tuple[Any, ...]], int]:
    """Read up to ``limit`` datagrams waiting on the UDP socket ``sock`` without waiting
    (each cut to MAX_UDP_READ bytes). Returns them, their sources (with ``sources``,
    else an empty list) and the errno of a read that failed (an ICMP error the kernel
    reports once, on some read: here, or on the next call's), 0 if none did."""
    out: list[bytes] = []
    froms: list[tuple[Any, ...]] = []
    flags = socket.MSG_DONTWAIT
    # (a socket with a timeout waits for that long before its read, whatever the flags)
    timed = bool(sock.gettimeout())
    try:
        while len(out) < limit:
            if timed and not select.select([sock], [], [], 0)[0]:
                break
            if sources:
                data, source = sock.recvfrom(MAX_UDP_READ, flags)
                froms.append(source)
            else:
                data = sock.recv(MAX_UDP_READ, flags)
            out.append(data)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        return out, froms, exc.errno or 0
    return out, froms, 0


def same_source(addrs: bytes, addr_slot: int, addr_lens: Sequence[int], n: int) -> int:
    """Of ``n`` raw sources (struct sockaddrs ``addr_slot`` bytes apart in ``addrs``,
    ``addr_lens[i]`` bytes each), how many from the first are the first's byte for byte:
    1 to ``n`` (0 for ``n`` 0, nothing else looked at). Raises ValueError, in this order,
    for a negative ``n``; when ``n`` slots overrun ``addrs``, the slot is outside 1 to
    2**32 - 1 or ``addr_lens`` has fewer than ``n`` lengths; for one of the ``n``
    lengths outside a uint32; when the first's length overruns its slot."""
    # (the C core takes n as a size_t, the slot and lengths as uint32s: a value outside
    # one is refused here as there, never wrapped, tests/native/test_udp_run_edges.py)
    if n <= 0:
        if n:
            raise ValueError("a negative count of sources")
        return 0
    if not 0 < addr_slot <= 0xFFFFFFFF or n > len(addrs) // addr_slot or len(addr_lens) < n:
        raise ValueError("sources out of bounds")
    lens = addr_lens[:n]
    if min(lens) < 0 or max(lens) > 0xFFFFFFFF:
        raise ValueError("a source length outside uint32")
    size = lens[0]
    if size > addr_slot:
        raise ValueError("a source longer than its slot")
    first = addrs[:size]
    count = 1
    while (
        count < n
        and lens[count] == size
        and addrs[count * addr_slot : count * addr_slot + size] == first
    ):
        count += 1
    return count
