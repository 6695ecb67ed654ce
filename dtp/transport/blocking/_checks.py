"""Argument checks of the blocking sockets' calls (buffers, sizes, flags, timeouts), as
the :mod:`socket` module makes them; the paid sockets check theirs with them too."""

from __future__ import annotations

import numbers
import operator
import sys
import threading
from typing import Any

from dtp.errors import LocalProtocolError


def writable(buffer: Any) -> memoryview:
    """``buffer`` as bytes to read into, or the TypeError a socket raises for it."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError(
            f"recv_into() needs a writable bytes-like buffer, not {type(buffer).__name__!r}"
        ) from None
    if view.readonly:
        what = type(buffer).__name__
        raise TypeError(f"recv_into() needs a writable buffer, not a read-only {what}")
    return view.cast("B")


SSIZE_MAX = sys.maxsize  # the largest byte count a socket takes (a C ssize_t)


def recv_into_target(buffer: Any, nbytes: Any, flags: Any) -> Any:
    """What ``recv_into(buffer, nbytes, flags)`` reads into: ``buffer`` (as bytes), or
    its first ``nbytes``; or the error a socket raises for the call, in its order
    (TypeError for the buffer, then the size's TypeError, OverflowError or ValueError,
    then the flags', then ValueError for a size past the buffer)."""
    if type(buffer) is not bytearray:
        buffer = writable(buffer)
    size = checked_size(nbytes, "recv_into")
    checked_flags(flags)
    if size > len(buffer):
        # (a socket's once silently read into a short buffer short)
        raise ValueError("buffer too small for requested bytes")
    if size and size < len(buffer):
        return memoryview(buffer)[:size]
    return buffer


def readable(data: Any) -> memoryview:
    """``data`` as the bytes a socket sends of it (an ``array('i')``'s raw bytes), or
    the error a socket raises for it: TypeError when not bytes-like, BufferError when
    not contiguous."""
    if type(data) is bytes:
        # (a view of bytes is one of bytes already: no cast, which makes a view and a
        # bytes object of its format each time)
        return memoryview(data)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(data).__name__!r}") from None
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.cast("B")


def checked_size(size: Any, call: str) -> int:
    """``size`` as a socket takes a byte count (recv's bufsize, recv_into's nbytes), or
    the error it raises: TypeError for a non-integer (1.5, "4"), OverflowError past
    what a C ssize_t holds, ValueError when negative."""
    n = operator.index(size)
    if not -SSIZE_MAX - 1 <= n <= SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    if n < 0:
        raise ValueError(f"negative buffersize in {call}")
    return n


def checked_flags(flags: Any) -> None:
    """Raise what a socket raises for ``flags`` that are not an integer (TypeError),
    then :func:`_no_flags` for any set: a DTP stream takes none."""
    if operator.index(flags):
        raise _no_flags(flags)


def check_sendfile(file: Any, offset: Any, count: Any, timeout: float | None) -> None:
    """Raise what a socket's sendfile() raises for its arguments and its ``timeout``,
    before anything is sent: ValueError for a file not opened in binary mode, a
    negative ``offset`` or a ``count`` of 0 or less, or a non-blocking socket;
    TypeError for an ``offset`` or ``count`` that is not an int (1.5)."""
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer, not {offset!r}")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
    if count is not None:
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if timeout == 0:
        raise ValueError("non-blocking sockets are not supported")


def _timeout_seconds(timeout: Any) -> float:
    """``timeout`` (not None) as a float of seconds, or the error a socket's settimeout
    raises for it: TypeError when not a number, ValueError for NaN, OverflowError past
    the longest wait a lock takes (``threading.TIMEOUT_MAX``; infinity too: a wait
    that long would fail later, in the middle of a read), either way (-inf: a socket's
    OverflowError, not the ValueError of a negative timeout)."""
    if not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    value = float(timeout)
    if value != value:
        raise ValueError("timeout must be >= 0 or None, not NaN")
    if abs(value) > threading.TIMEOUT_MAX:
        raise OverflowError(f"timeout out of range (at most {threading.TIMEOUT_MAX:.0f} s)")
    return value


def checked_timeout(timeout: float | None) -> float | None:
    """``timeout`` as settimeout() stores it, or the error a socket's raises for it."""
    if timeout is None:
        return None
    value = _timeout_seconds(timeout)
    if value < 0:
        raise ValueError("timeout must be >= 0 or None")
    return value


class Own:
    """The type of :data:`OWN`."""


OWN = Own()  # (a timeout argument) the socket's own timeout


def _no_flags(flags: int) -> LocalProtocolError:
    """The error for socket flags given to a DTP stream, which takes none: ignoring
    MSG_PEEK would consume what the caller meant to leave, MSG_DONTWAIT would block."""
    return LocalProtocolError(
        f"DTP sockets take no flags (got {flags:#x}); use settimeout(0) for non-blocking calls"
    )
