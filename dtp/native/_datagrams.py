"""A run of DATAGRAM frames in one call of the C core: :func:`encode_datagram_run`
(``dtp_datagram_frames_encode``), the send path of a burst of datagrams (a UDP
relay's): one crossing of the cffi boundary for the run, not one per frame. Its twin
is :mod:`dtp.native.reference._datagrams` (``DTP_PUREPYTHON=1``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dtp.errors import ErrorCode, LocalProtocolError, error_for
from dtp.native._binding import HAVE_NATIVE, PUREPYTHON, ffi, lib
from dtp.native.reference._datagrams import encode_datagram_run as _twin_encode_datagram_run

__all__ = ["encode_datagram_run", "native_encode_datagram_run"]

_new_uninit: Any = ffi.new_allocator(should_clear_after_alloc=False) if ffi is not None else None


def native_encode_datagram_run(
    datagrams: Sequence[bytes | bytearray | memoryview], limit: int
) -> list[bytes]:
    """The C core's :func:`dtp.native.reference._datagrams.encode_datagram_run`: the
    same plaintexts and errors."""
    n = len(datagrams)
    if not isinstance(limit, int) or not 0 < limit <= 0xFFFFFFFF:
        # (C's size_t would take a negative or huge one wrapped)
        raise LocalProtocolError(code=ErrorCode.ARG)
    if not n:
        return _twin_encode_datagram_run((), limit)  # (the limit's check alone)
    data = b"".join(datagrams)
    offs = ffi.new("uint64_t[]", list(itertools.accumulate(map(len, datagrams), initial=0)))
    if len(data) != offs[n]:
        # a buffer of wider items (len() counted items): its bytes, as the twin reads it
        data = b"".join(map(bytes, datagrams))
        offs = ffi.new(
            "uint64_t[]", list(itertools.accumulate((len(bytes(d)) for d in datagrams), initial=0))
        )
    # a frame is its data and at most 3 bytes of header (a length below 2**14)
    cap = len(data) + 3 * n
    out = _new_uninit("uint8_t[]", cap)
    ends = _new_uninit("uint64_t[]", n)
    rc = lib.dtp_datagram_frames_encode(data, len(data), offs, n, limit, out, cap, ends, n)
    if rc < 0:
        raise error_for(rc, remote=False)
    view = ffi.buffer(out, cap)
    records = []
    start = 0
    for k in range(rc):
        end = ends[k]
        records.append(view[start:end])
        start = end
    return records


if TYPE_CHECKING or (HAVE_NATIVE and not PUREPYTHON):
    encode_datagram_run = native_encode_datagram_run
else:
    encode_datagram_run = _twin_encode_datagram_run
