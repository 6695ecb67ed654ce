"""File objects over a DTP stream, as :meth:`socket.socket.makefile` makes them."""

from __future__ import annotations

import io
import weakref
from typing import Any, Protocol

from dtp.transport.blocking._checks import readable


class FileOwner(Protocol):
    """The DTP socket a file is made of (:class:`~dtp.transport.blocking._socket.DTPSocket`):
    it knows its files, and its close waits until the last one is closed."""

    _files: weakref.WeakSet[Any]
    _io_refs: int

    def _release_file(self) -> None: ...


class FileStream(Protocol):
    """What :func:`stream_file` reads and writes through."""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int: ...

    def send(self, data: Any, flags: int = 0, /) -> int: ...


def stream_file(
    sock: FileStream,
    mode: str = "rb",
    buffering: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    *,
    owner: FileOwner | None = None,
) -> Any:
    """A file object over ``sock``'s ``recv_into`` and ``send``, as
    :meth:`socket.socket.makefile` makes one (``mode`` of r, w and b; neither r nor w:
    read-only). ``owner``: the DTP socket whose :meth:`~DTPSocket.close` waits until
    this file is closed."""
    if not set(mode) <= {"r", "w", "b"}:
        raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
    writing = "w" in mode
    reading = "r" in mode or not writing  # ("b" alone reads, as a socket's file does)
    if buffering is None or buffering < 0:
        buffering = io.DEFAULT_BUFFER_SIZE
    if buffering == 0 and "b" not in mode:
        raise ValueError("unbuffered streams must be binary")
    raw = _StreamIO(sock, reading, writing, owner)
    if buffering == 0:
        return _held(raw, owner)
    buffered: io.BufferedIOBase
    if reading and writing:
        buffered = io.BufferedRWPair(raw, raw, buffering)
    elif reading:
        buffered = io.BufferedReader(raw, buffering)
    else:
        buffered = io.BufferedWriter(raw, buffering)
    if "b" in mode:
        return _held(buffered, owner)
    text: Any = io.TextIOWrapper(buffered, encoding, errors, newline)
    text.mode = mode  # (as socket.makefile sets it)
    return _held(text, owner)


def _held(file: Any, owner: FileOwner | None) -> Any:
    """``file``, known to ``owner`` (which flushes it at the interpreter's exit)."""
    if owner is not None:
        owner._files.add(file)
    return file


class _StreamIO(io.RawIOBase):
    """The raw file under :func:`stream_file`, with :class:`socket.SocketIO`'s contract:
    after a read that timed out (or was interrupted), which may leave taken bytes in the
    buffered file above, it refuses to read on (OSError) rather than go on after a gap;
    on a non-blocking socket a read that would block returns None and a write sends what
    fits and returns its count (None: nothing fits), so that the buffered file neither
    loses bytes nor sends one twice."""

    def __init__(
        self, sock: FileStream, reading: bool, writing: bool, owner: FileOwner | None
    ) -> None:
        super().__init__()
        self._sock = sock
        self._reading = reading
        self._writing = writing
        self._timed_out = False
        self._owner = owner
        if owner is not None:
            owner._io_refs += 1

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release_file()

    @property
    def mode(self) -> str:
        """As :class:`socket.SocketIO`'s: ``rb``, ``wb`` or ``rwb``."""
        return ("r" if self._reading else "") + ("w" if self._writing else "") + "b"

    @property
    def name(self) -> str:
        """What the file reads and writes (a socket's file names its descriptor, which
        a DTP stream has not: :meth:`DTPSocket.fileno`)."""
        stream = getattr(self._sock, "_stream_id", None)
        return "<dtp stream>" if stream is None else f"<dtp stream {stream}>"

    def readable(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self._reading

    def writable(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self._writing

    def readinto(self, b: Any) -> int | None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if not self._reading:
            raise io.UnsupportedOperation("File or stream is not readable.")
        if self._timed_out:
            raise OSError("cannot read from timed out object")
        try:
            return self._sock.recv_into(b)
        except TimeoutError:  # (DTPTimeoutError: a timeout, or interrupt_recv)
            self._timed_out = True
            raise
        except BlockingIOError:
            return None  # non-blocking, nothing there

    def write(self, b: Any) -> int | None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if not self._writing:
            raise io.UnsupportedOperation("File or stream is not writable.")
        view = readable(b)  # (a socket file's error for a strided view: BufferError)
        try:
            sent = self._sock.send(view)
        except BlockingIOError:
            return None  # non-blocking, no room
        # a blocking socket's send takes what fits (a socket's takes it all): on with
        # the rest until the socket would wait no more, then the count of what went --
        # an error raised past it would have the file send those bytes again
        while 0 < sent < len(view):
            try:
                sent += self._sock.send(view[sent:])
            except (BlockingIOError, TimeoutError):
                break  # (the next write finds it again)
        return sent
