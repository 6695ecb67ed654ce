"""UDP through DTP, the I/O side both drivers share: binding and checking the local and
backend sockets, draining them, the checks of the drivers' arguments, the wall clock,
and what the drivers do to a DTP connection (:func:`abort_control`)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket as _socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.errors import (
    DTPError,
    InvalidArgument,
    TunnelError,
)
from dtp.hostid.udp._engine import BadControlFrame, RelayEngine
from dtp.hostid.udp._stats import UdpStats
from dtp.native._udpio import recv_datagram_run, send_datagram_run

if TYPE_CHECKING:
    from dtp.transport.asyncio._streams import DTPStreamWriter
    from dtp.transport.blocking._socket import DTPSocket


logger = logging.getLogger(__name__)


def wall_ms() -> int:
    """The wall clock in milliseconds: a receipt's time (the engine reads no clock)."""
    return int(time.time() * 1000)


# -- what the drivers do to a DTP connection: named here, once, for both ---------------
# (what they read of one is the transport's public API: connection_ended,
# reliable_carrier, connection_closed())


def abort_control(sock: DTPSocket | DTPStreamWriter, exc: BadControlFrame) -> None:
    """End the connection of a peer that broke the control protocol, with the reason
    (a blocking socket's or an asyncio writer's: both abort alike)."""
    logger.info("UDP control stream: %s: closing the connection", exc)
    with contextlib.suppress(DTPError, OSError):
        sock.abort(str(exc))


class UnreadDrops:
    """A blocking DTP socket's datagrams dropped unread (``datagrams_dropped``), added
    to ``stats.dropped_unread`` as they grow: counted by the connection alone, a relay
    that fell behind showed fewer datagrams in than its client sent, and no drop."""

    def __init__(self, sock: DTPSocket, stats: UdpStats) -> None:
        self._sock = sock
        self._stats = stats
        self._seen = sock.datagrams_dropped
        # (a forwarder's flow counts from its reply thread and from the thread that
        # ends it, which may overlap: each drop is added once)
        self._lock = threading.Lock()

    def count(self) -> None:
        """Add what the connection dropped since the last count."""
        if self._sock.datagrams_dropped == self._seen:
            return  # (the common case, without the lock: nothing new to add)
        with self._lock:
            dropped = self._sock.datagrams_dropped
            if dropped != self._seen:
                self._stats.add(dropped_unread=dropped - self._seen)
                self._seen = dropped


def _port_ok(port: object) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 0xFFFF


def _check_listen(listen: tuple[str, int]) -> None:
    """Refuse a local address before a socket is made for it, as
    :func:`dtp.hostid.paid._policy.check_address` does: a port out of range, or a TypeError
    for no (host, port) tuple with a str host."""
    if (
        not isinstance(listen, tuple)
        or not 2 <= len(listen) <= 4  # (an IPv6 one may add flowinfo and scope_id)
        or not isinstance(listen[0], str)
    ):
        raise TypeError(
            f"listen must be a (host, port) tuple such as ('127.0.0.1', 0), got {listen!r}"
        )
    if not _port_ok(listen[1]):
        raise InvalidArgument(f"listen: port {listen[1]!r} is outside 0..65535")


def bind_udp(listen: tuple[str, int], *, blocking: bool) -> _socket.socket:
    """The forwarders' local UDP socket, bound to ``listen``, closed on any failure
    (bind() raises TypeError too)."""
    _check_listen(listen)
    family = _socket.AF_INET6 if ":" in listen[0] else _socket.AF_INET
    udp = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        udp.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4 << 20)
        udp.setblocking(blocking)
        udp.bind(listen)
    except BaseException:
        udp.close()
        raise
    return udp


def check_backend(backend: tuple[str, int]) -> None:
    """:class:`TunnelError` for a backend port out of range, before anything opens
    (connect() raised OverflowError, untyped, past the socket it left open); the same
    for a host that is no str (None failed on the family test, untyped)."""
    if not isinstance(backend, tuple) or len(backend) < 2 or not isinstance(backend[0], str):
        raise TunnelError(f"UDP backend {backend!r}: not a (host, port) tuple")
    if not _port_ok(backend[1]):
        raise TunnelError(f"UDP backend {backend}: port {backend[1]!r} is outside 0..65535")


def backend_socket(
    backend: tuple[str, int],
    *,
    blocking: bool = True,
    resolved: tuple[int, tuple[object, ...]] | None = None,
) -> _socket.socket:
    """A UDP socket connected to ``backend`` (so only its replies come back), or
    :class:`TunnelError` when the address cannot be a UDP destination (e.g. a broadcast
    address, an unknown host, a port out of range) -- closed first, not left to the
    garbage collector. ``resolved``: ``(family, sockaddr)`` of ``backend`` already
    looked up (by an event loop, which must not wait on a blocking lookup here)."""
    check_backend(backend)
    if resolved is not None:
        family, address = resolved
    else:
        family = _socket.AF_INET6 if ":" in backend[0] else _socket.AF_INET
        address = backend
    try:
        udp = _socket.socket(family, _socket.SOCK_DGRAM)
    except OSError as exc:
        raise TunnelError(f"UDP backend {backend}: no socket: {exc}") from exc
    try:
        udp.setblocking(blocking)
        udp.connect(address)
    except (OSError, ValueError, TypeError) as exc:
        # (ValueError: UnicodeError of a bad name; TypeError: an address connect()
        # cannot take, such as a null character in the host -- it would escape untyped,
        # past this socket and the relay's connection, both left open)
        udp.close()
        raise TunnelError(f"UDP backend {backend} cannot be used: {exc}") from exc
    except BaseException:
        udp.close()
        raise
    return udp


#: :func:`pass_replies`' guard where one thread alone uses the engine (asyncio).
_UNGUARDED: contextlib.AbstractContextManager[object] = contextlib.nullcontext()


def pass_replies(
    batch: list[bytes],
    limit: int,
    send: Callable[[list[bytes]], int],
    stats: UdpStats,
    engine: RelayEngine,
    guard: contextlib.AbstractContextManager[object] = _UNGUARDED,
) -> tuple[bool, bytes | None]:
    """Both relays' reply path: hand ``send`` what :meth:`RelayEngine.replies` lets
    through, then :meth:`RelayEngine.replied`, ``guard`` held around each engine call,
    never around ``send``. Whether ``send`` was called, and the report due, if any."""
    if not engine.gated:
        return pass_ungated(batch, limit, send, stats, guard is not _UNGUARDED), None
    with guard:
        replies = engine.replies(batch, limit)
    fits = replies.send
    if not fits:
        stats.add(dropped_oversized=replies.oversized, dropped_unpaid=replies.unpaid)
        return False, None
    try:
        sent = send(fits)
    except BaseException:
        with guard:
            # nothing went: the reservation goes, and nothing is counted, so no report
            # falls due that the last count's own call did not return already
            engine.replied(replies, 0, 0, 0.0)
        stats.add(dropped_oversized=replies.oversized, dropped_unpaid=replies.unpaid)
        raise
    nbytes = sum(map(len, fits if sent == len(fits) else fits[:sent]))
    now = time.monotonic()
    with guard:
        frame = engine.replied(replies, sent, nbytes, now)
    stats.add(
        datagrams_out=sent,
        bytes_out=nbytes,
        dropped_backlog=len(fits) - sent,
        dropped_oversized=replies.oversized,
        dropped_unpaid=replies.unpaid,
    )
    return True, frame


def pass_ungated(
    batch: list[bytes],
    limit: int,
    send: Callable[[list[bytes]], int],
    stats: UdpStats,
    shared: bool,
) -> bool:
    """:func:`pass_replies` for an engine with no billing and no rate limits (the relays
    call it directly then: a call less per run), whose
    :meth:`~RelayEngine.replies` only drops what does not fit ``limit`` and whose
    :meth:`~RelayEngine.replied` does nothing: the same counts, with no engine call
    and no guard (one thread alone, not ``shared``: added to the fields, no lock)."""
    if max(map(len, batch), default=0) <= limit:
        fits, oversized = batch, 0
    else:
        fits = [d for d in batch if len(d) <= limit]
        oversized = len(batch) - len(fits)
    if not fits:
        if oversized:
            stats.add(dropped_oversized=oversized)
        return False
    try:
        sent = send(fits)
    except BaseException:
        if oversized:
            stats.add(dropped_oversized=oversized)
        raise
    nbytes = sum(map(len, fits if sent == len(fits) else fits[:sent]))
    if shared or oversized or sent < len(fits):
        stats.add(
            datagrams_out=sent,
            bytes_out=nbytes,
            dropped_backlog=len(fits) - sent,
            dropped_oversized=oversized,
        )
    else:  # (the usual run: all of it went)
        stats.datagrams_out += sent
        stats.bytes_out += nbytes
    return True


def deliver(
    udp: _socket.socket,
    run: list[bytes],
    stats: UdpStats,
    address: tuple[Any, ...] | None = None,
    *,
    shared: bool = True,
) -> None:
    """Send a run of datagrams to the UDP side (``address``, or the socket's connected
    peer) in one call (:func:`~dtp.native._udpio.send_datagram_run`: a system call per
    64, not one each) and count them: ``datagrams_in`` and ``bytes_in``, or
    ``dropped_send_failed`` for those the kernel refused (a blocking socket waits for
    room instead). ``shared``: the counters are shared by threads (added under their
    lock); else one thread (the event loop) writes them, and adds to the fields."""
    sent, nbytes, _ = send_datagram_run(udp, run, address)
    if shared:
        stats.add(datagrams_in=sent, bytes_in=nbytes, dropped_send_failed=len(run) - sent)
        return
    if sent < len(run):
        stats.add(dropped_send_failed=len(run) - sent)
    stats.datagrams_in += sent
    stats.bytes_in += nbytes


def drain(udp: _socket.socket, limit: int = 256) -> list[bytes]:
    """Every datagram waiting on a ready socket (at most ``limit``; those read before
    an ICMP error when the readiness was one, e.g. the backend's port is closed or its
    host unreachable)."""
    # (one call for the run: the interpreter lock is released once, not per datagram)
    out, _, err = recv_datagram_run(udp, limit)
    if err:
        # an earlier datagram's ICMP error, reported once on a read: raised, it would
        # end the blocking relay's reply thread for good
        logger.debug("UDP backend %s: %s", _peer_name(udp), os.strerror(err))
    return out


def _peer_name(udp: _socket.socket) -> object:
    """The backend a relay's socket is connected to, for a log line."""
    try:
        return udp.getpeername()
    except OSError:
        return "?"


def drain_by_source(udp: _socket.socket, limit: int = 256) -> dict[tuple[Any, ...], list[bytes]]:
    """Every datagram waiting on a ready socket (at most ``limit``), grouped by source
    in arrival order, each flow's burst sent together. An IPv6 source is
    ``(host, port, 0, scope_id)``: one flow per scope, whatever the flow label."""
    flows: dict[tuple[Any, ...], list[bytes]] = {}
    datagrams, sources, err = recv_datagram_run(udp, limit, sources=True)
    if err and not datagrams:
        # (a closed socket, say: as a recvfrom raised it; the blocking forwarder ends
        # its reader on it once closed)
        raise OSError(err, os.strerror(err))
    if err:  # (after datagrams read: they go on)
        logger.debug("UDP forwarder socket: %s", os.strerror(err))
    if datagrams and sources.count(first := sources[0]) == len(sources):
        # one source's burst, the common case: no grouping step per datagram (the
        # sources of one address are one cached tuple, which count() finds by identity)
        return {first if len(first) == 2 else (first[0], first[1]): datagrams}
    for data, source in zip(datagrams, sources, strict=True):
        key = source if len(source) != 4 else (source[0], source[1], 0, source[3])
        flows.setdefault(key, []).append(data)
    return flows
