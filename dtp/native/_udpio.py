"""UDP runs for the relays of :mod:`dtp.hostid.udp`: :func:`send_datagram_run` and
:func:`recv_datagram_run` move a run of datagrams in one call of the C core
(``sendmmsg`` / ``recvmmsg``, a system call per 64 datagrams), so that a burst takes
and releases the interpreter lock once, not once per datagram; on a UDP socket a run's
datagrams of one size go as segmented messages (``UDP_SEGMENT``), which the kernel
cuts apart below its route lookup (whether a socket takes them asked once per kind of
socket, :func:`takes_gso`). All give exactly what their twin,
:mod:`dtp.native.reference._udpio` (``DTP_PUREPYTHON=1``), gives."""

from __future__ import annotations

import _socket
import errno
import itertools
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dtp.native._binding import HAVE_NATIVE, PUREPYTHON, ffi, lib
from dtp.native.reference._udpio import MAX_UDP_READ
from dtp.native.reference._udpio import recv_datagram_run as _twin_recv_datagram_run
from dtp.native.reference._udpio import same_source as _twin_same_source
from dtp.native.reference._udpio import send_datagram_run as _twin_send_datagram_run
from dtp.native.reference._udpio import takes_gso as _twin_takes_gso

__all__ = [
    "native_recv_datagram_run",
    "native_same_source",
    "native_send_datagram_run",
    "native_takes_gso",
    "recv_datagram_run",
    "same_source",
    "send_datagram_run",
    "takes_gso",
]

Address = tuple[str, int] | tuple[str, int, int, int]

_SOCKADDRS: dict[tuple[int, Address], bytes] = {}
#: A socket's family as the plain int the C socket keeps: ``socket.socket.family`` is a
#: property that makes an enum of it, four Python calls at every run a relay sends
_family: Any = _socket.socket.family.__get__
_type: Any = _socket.socket.type.__get__  # (the same, for its type)
_SOCKADDRS_KEPT = 256
#: Whether sockets of a (family, type, protocol) take a segmented send
#: (``dtp_udp_takes_gso``): the option's presence is the protocol's, not one socket's,
#: so a yes is asked once, not by a system call at every run of more than two
_GSO: dict[tuple[int, int, int], int] = {}


def _sockaddr(family: int, address: Address) -> bytes:
    """``address`` as the kernel's struct sockaddr_in or sockaddr_in6 (Linux's layout:
    the family in host order, port and flow label in network order), for a numeric
    host. Raises OSError, ValueError, TypeError or struct.error for anything else (a
    name to look up, a bad port or flow label...): the caller then leaves it to
    ``sendto``, as the twin does."""
    port = address[1]
    if type(port) is not int or not 0 <= port <= 65535:
        # (before the look-up: ("h", 5.0) and ("h", True) equal ("h", 5) as keys, and
        # sendto refuses them)
        raise ValueError("not a port number")
    if len(address) == 4 and not (type(address[2]) is int and type(address[3]) is int):
        raise ValueError("not a flow label and scope id")  # (the same, for IPv6's)
    key = (family, address)
    found = _SOCKADDRS.get(key)
    if found is not None:
        return found
    if family == socket.AF_INET:
        host = address[0]
        # (inet_pton, not inet_aton: that takes "127.0.0.1 junk" and "1" as addresses)
        raw = struct.pack("=H", family) + struct.pack("!H", port)
        raw += socket.inet_pton(socket.AF_INET, host) + bytes(8)
    elif family == socket.AF_INET6:
        host = address[0]
        flow, scope = (address[2], address[3]) if len(address) == 4 else (0, 0)
        if "%" in host:  # (a scoped literal: its interface is the scope)
            host, _, name = host.partition("%")
            scope = scope or socket.if_nametoindex(name)
        raw = struct.pack("=H", family) + struct.pack("!HI", port, flow)
        raw += socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", scope)
    else:
        raise OSError(errno.EAFNOSUPPORT, f"address family {family} is not UDP's")
    if len(_SOCKADDRS) >= _SOCKADDRS_KEPT:
        _SOCKADDRS.clear()
    _SOCKADDRS[key] = raw
    return raw


_RUN = 64  # DTP_UDP_RUN_MAX: datagrams per sendmmsg or recvmmsg


class _SendSlots:
    """A send's arguments to the C core, kept for the next run as a read's are (three
    allocations less per run): the offsets of up to _RUN datagrams, the bytes sent
    and the errno."""

    def __init__(self) -> None:
        self.offs = ffi.new("uint64_t[]", _RUN + 1)
        self.out = ffi.new("uint64_t *")
        self.err = ffi.new("int *")


_spare_send_slots: list[_SendSlots] = []  # (one per thread sending at once)


def native_send_datagram_run(
    sock: socket.socket,
    datagrams: Sequence[bytes | bytearray | memoryview],
    address: Address | None = None,
) -> tuple[int, int, int]:
    """The C core's :func:`dtp.native.reference._udpio.send_datagram_run`: the same
    results, one ``sendmmsg`` per 64 datagrams."""
    n = len(datagrams)
    fd = sock.fileno()
    if fd < 0:
        return 0, 0, errno.EBADF if n else 0
    if not n:
        return 0, 0, 0
    if address is None:
        addr: Any = ffi.NULL
        alen = 0
    else:
        try:
            # (_sockaddr's cache, looked at first: a flow's every run goes to one address;
            # only for an address of ints, as a float equal to a remembered int is a key
            # equal to its own, which sendto refuses)
            exact = type(address[1]) is int and (
                len(address) == 2 or type(address[2]) is type(address[3]) is int
            )
            addr = (exact and _SOCKADDRS.get((_family(sock), address))) or _sockaddr(
                _family(sock), address
            )
        except (OSError, ValueError, TypeError, struct.error):
            # what sendto makes of it (a name it looks up, an error per datagram)
            return _twin_send_datagram_run(sock, datagrams, address)
        alen = len(addr)
    data = b"".join(datagrams)  # (one bytes object: itself, not a copy)
    try:
        slots = _spare_send_slots.pop()
    except IndexError:
        slots = _SendSlots()
    try:
        if n == 1:  # (a quiet flow's run: offs[0] is 0 for good)
            offs = slots.offs
            offs[1] = len(datagrams[0])
        elif n <= _RUN:
            offs = slots.offs
            offs[0 : n + 1] = list(itertools.accumulate(map(len, datagrams), initial=0))
        else:
            offs = ffi.new("uint64_t[]", list(itertools.accumulate(map(len, datagrams), initial=0)))
        if len(data) != offs[n]:
            # a datagram of items wider than a byte (len() counted items): as the twin does
            return _twin_send_datagram_run(sock, datagrams, address)
        gso = 0  # (a run of two or fewer is never segmented)
        if n > 2:
            kind = (_family(sock), _type(sock), sock.proto)
            gso = _GSO.get(kind, -1)
            if gso < 0:
                # (a yes is kept for the kind; a no is asked again: it may have been a
                # socket closed under the call, which must not turn segmenting off)
                gso = lib.dtp_udp_takes_gso(fd)
                if gso == 1:
                    _GSO[kind] = 1
        out = slots.out
        rc = lib.dtp_udp_send_run(fd, data, len(data), offs, n, addr, alen, gso, out, slots.err)
        if rc < 0:  # (only for arguments the checks above rule out)
            raise ValueError(f"dtp_udp_send_run: bad arguments ({rc})")
        return int(rc), int(out[0]), int(slots.err[0])
    finally:
        if len(_spare_send_slots) < 4:
            _spare_send_slots.append(slots)


_ADDR_SLOT = 128  # sizeof(struct sockaddr_storage)
_SOURCES: dict[bytes, tuple[Any, ...]] = {}


class _RecvSlots:
    """A read's buffers: _RUN slots of MAX_UDP_READ bytes (untouched pages cost no
    memory), their lengths, sources and source lengths."""

    def __init__(self) -> None:
        self.buf = _new_uninit("uint8_t[]", _RUN * MAX_UDP_READ)
        self.view = ffi.buffer(self.buf)
        self.lens = _new_uninit("uint32_t[]", _RUN)
        self.addrs = _new_uninit("uint8_t[]", _RUN * _ADDR_SLOT)
        self.addrs_view = ffi.buffer(self.addrs)
        self.addr_lens = _new_uninit("uint32_t[]", _RUN)
        self.err = ffi.new("int *")


_new_uninit: Any = ffi.new_allocator(should_clear_after_alloc=False) if ffi is not None else None
_spare_slots: list[_RecvSlots] = []  # (one per thread reading at once, kept for the next)


def _source(raw: bytes) -> tuple[Any, ...]:
    """A struct sockaddr as ``recvfrom`` gives it: (host, port) for IPv4, (host, port,
    flowinfo, scope_id) for IPv6 (the scope in scope_id only, never as a "%iface"
    suffix of the host: CPython's recvfrom has not added one since 3.7)."""
    found = _SOURCES.get(raw)
    if found is not None:
        return found
    (family,) = struct.unpack_from("=H", raw)
    source: tuple[Any, ...]
    if family == socket.AF_INET:
        source = (socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big"))
    elif family == socket.AF_INET6:
        port, flow = struct.unpack_from("!HI", raw, 2)
        (scope,) = struct.unpack_from("=I", raw, 24)
        source = (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope)
    else:  # (not UDP over IP: the raw address, as a key)
        source = (raw,)
    if len(_SOURCES) >= _SOCKADDRS_KEPT:
        _SOURCES.clear()
    _SOURCES[raw] = source
    return source


def native_recv_datagram_run(
    sock: socket.socket, limit: int, sources: bool = False
) -> tuple[list[bytes], list[tuple[Any, ...]], int]:
    """The C core's :func:`dtp.native.reference._udpio.recv_datagram_run`: a
    ``recvmmsg`` per 64 datagrams."""
    fd = sock.fileno()
    out: list[bytes] = []
    froms: list[tuple[Any, ...]] = []
    if fd < 0:
        return out, froms, errno.EBADF
    try:
        slots = _spare_slots.pop()
    except IndexError:
        slots = _RecvSlots()
    try:
        addrs = slots.addrs if sources else ffi.NULL
        while len(out) < limit:
            want = min(_RUN, limit - len(out))
            rc = lib.dtp_udp_recv_run(
                fd,
                slots.buf,
                _RUN * MAX_UDP_READ,
                MAX_UDP_READ,
                want,
                slots.lens,
                addrs,
                _RUN * _ADDR_SLOT if sources else 0,
                _ADDR_SLOT,
                slots.addr_lens,
                slots.err,
            )
            if rc < 0:
                return out, froms, int(slots.err[0])
            view = slots.view
            lens = slots.lens
            if rc == 1:  # (one datagram, the usual read of a quiet flow: no comprehensions)
                out.append(view[: lens[0]])
                if sources:
                    a = slots.addrs_view[: slots.addr_lens[0]]
                    froms.append(_SOURCES.get(a) or _source(a))
            else:
                out += [view[i * MAX_UDP_READ : i * MAX_UDP_READ + lens[i]] for i in range(rc)]
                if sources:
                    raw = slots.addrs_view
                    alens = slots.addr_lens
                    known = _SOURCES.get  # (a burst's sources are known: no call each)
                    # (one client's burst, the usual: its source looked up once)
                    same = lib.dtp_udp_same_source(
                        slots.addrs, _RUN * _ADDR_SLOT, _ADDR_SLOT, alens, rc
                    )
                    if same == rc:
                        a = raw[: alens[0]]
                        froms += [known(a) or _source(a)] * rc
                    else:
                        froms += [
                            known(a) or _source(a)
                            for a in [
                                raw[i * _ADDR_SLOT : i * _ADDR_SLOT + alens[i]] for i in range(rc)
                            ]
                        ]
            if rc < want:
                break
    finally:
        if len(_spare_slots) < 4:
            _spare_slots.append(slots)
    return out, froms, 0


def native_same_source(addrs: bytes, addr_slot: int, addr_lens: Sequence[int], n: int) -> int:
    """The C core's :func:`dtp.native.reference._udpio.same_source` (a read of sources
    calls it on its own buffers, :func:`native_recv_datagram_run`): the same count, and
    the same ValueError for the same bad arguments."""
    if n <= 0:
        if n:
            raise ValueError("a negative count of sources")
        return 0
    if len(addr_lens) < n:
        raise ValueError("sources out of bounds")
    try:
        lens = ffi.new("uint32_t[]", list(addr_lens[:n]))
        rc = lib.dtp_udp_same_source(ffi.from_buffer(addrs), len(addrs), addr_slot, lens, n)
    except OverflowError:
        # a slot or length outside a uint32 (caught, not checked first: off the usual
        # path): the twin's checks, in its order, say which
        _twin_same_source(addrs, addr_slot, addr_lens, n)
        raise ValueError("sources out of bounds") from None  # (the twin always raises)
    if rc < 0:  # (DTP_ERR_ARG: the slots overrun addrs, or the first's length its slot)
        if addr_slot <= 0 or n > len(addrs) // addr_slot:
            raise ValueError("sources out of bounds")
        raise ValueError("a source longer than its slot")
    return int(rc)


def native_takes_gso(sock: socket.socket) -> bool:
    """The C core's :func:`dtp.native.reference._udpio.takes_gso`
    (``dtp_udp_takes_gso``): the same answer."""
    fd = sock.fileno()
    return fd >= 0 and lib.dtp_udp_takes_gso(fd) == 1


if TYPE_CHECKING or (HAVE_NATIVE and not PUREPYTHON):
    send_datagram_run = native_send_datagram_run
    recv_datagram_run = native_recv_datagram_run
    same_source = native_same_source
    takes_gso = native_takes_gso
else:
    send_datagram_run = _twin_send_datagram_run
    recv_datagram_run = _twin_recv_datagram_run
    same_source = _twin_same_source
    takes_gso = _twin_takes_gso
