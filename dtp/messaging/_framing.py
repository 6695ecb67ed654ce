"""Length-prefixed msgpack frames: the byte layer under every messaging protocol.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack
(docs/messaging.md §1). :class:`FrameDecoder` is a resumable parser with a cap: partial
input yields nothing, a frame above the cap is *skipped* (its bytes are discarded as they
arrive, never buffered) and reported as :class:`Oversized`, so one bad frame does not end
the stream. Nothing here does I/O.
"""

from __future__ import annotations

import operator
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from dtp.messaging.errors import MalformedMessage, PayloadTooLarge, not_encodable
from dtp.protocol._buffers import bytes_like

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "HEAD_KEEP",
    "FrameDecoder",
    "Oversized",
    "bytes_like",
    "decode_body",
    "encode_body",
    "encode_frame",
    "read_frames",
]

#: Default cap on one frame's body (bytes).
DEFAULT_MAX_MESSAGE: Final = 1 << 20
#: Bytes of an oversized frame's body kept for the caller (enough for a message's kind and
#: id, so a server can still answer the request that was too large).
HEAD_KEEP: Final = 24
_HEADER: Final = struct.Struct(">I")
#: The largest body a 4-byte length can announce.
_MAX_LENGTH: Final = 0xFFFFFFFF
# one msgpack Packer per thread: msgpack.packb builds one (with a 256 KiB buffer) per call
_packers = threading.local()


def encode_body(message: Any) -> bytes:
    """The msgpack of ``message`` (a frame's body, or a part of one a caller assembles):
    :class:`NotEncodable` (a TypeError) for values msgpack cannot encode."""
    return _pack(message)


def _pack(message: Any) -> bytes:
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True, buf_size=4096).pack
    try:
        body: bytes = pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise not_encodable(exc) from exc
    return body


def _check_size(what: str, value: object) -> int:
    """``value`` as a plain int of at least 1: TypeError for anything but an int (a bool,
    a float, a str), ValueError below 1. (A NaN cap compared False with every length, so
    nothing was ever over it; True was a cap of one byte.) Callers use what it returns:
    an int subclass keeps its own comparisons, and ``length > cap`` asks the subclass
    first -- one answering False let every frame through, as NaN did."""
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__!r}")
    size = operator.index(value)  # (a plain int: no method of the subclass is called)
    if size < 1:
        raise ValueError(f"{what} must be at least 1, not {size}")
    return size


def encode_frame(message: Any, max_size: int = DEFAULT_MAX_MESSAGE) -> bytes:
    """The frame for ``message`` (any msgpack-able value). Raises :class:`PayloadTooLarge`
    above ``max_size`` (or the 4-byte length's 2**32-1) and :class:`NotEncodable` (a
    TypeError) for values msgpack cannot encode; TypeError for a ``max_size`` that is not
    an int, ValueError for one below 1."""
    # (the 4-byte length's limit is the cap when it is the lower: not a struct.error,
    # and not "exceeds the cap of" a cap the message is below)
    cap = min(_check_size("max_size", max_size), _MAX_LENGTH)
    body = _pack(message)
    if len(body) > cap:
        raise PayloadTooLarge(f"message of {len(body)} bytes exceeds the cap of {cap}")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    """Decode one frame body; raises :class:`MalformedMessage` for anything not msgpack
    (trailing bytes, bad UTF-8, nesting too deep, unhashable map keys…)."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises ValueError, TypeError, its own errors
        raise MalformedMessage(f"frame is not valid msgpack ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame above the cap was skipped."""

    #: The length the frame's header announced.
    length: int
    #: Its first bytes (at most :data:`HEAD_KEEP`).
    head: bytes


class FrameDecoder:
    """Resumable frame parser: :meth:`feed` bytes, then call :meth:`next` until None."""

    __slots__ = ("_buf", "_head", "_head_want", "_max", "_pos", "_skip", "_skip_len")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        cap = _check_size("max_size", max_size)
        if cap > _MAX_LENGTH:
            raise ValueError("max_size must be in 1..2**32-1")
        self._max = cap
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0  # bytes of an oversized frame still to discard
        self._skip_len = 0
        self._head = b""
        self._head_want = 0  # bytes of the skipped frame's head to keep

    @property
    def buffered(self) -> int:
        """Bytes held (at most one partial frame of up to the cap, plus unread frames)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def frames(self, data: bytes | bytearray | memoryview) -> list[bytes | Oversized]:
        """:meth:`feed` ``data``, then every complete item :meth:`next` would give."""
        out: list[bytes | Oversized] = []
        pos = 0
        if not self._buf and not self._skip and type(data) is bytes:
            # the common case, whole frames in one read: slice them out of ``data``,
            # with no copy through the buffer
            end, cap = len(data), self._max
            if end >= 4:
                (length,) = _HEADER.unpack_from(data)
                if length + 4 == end and length <= cap:
                    return [data[4:]]  # exactly one frame: a call's request or answer
            while end - pos >= 4:
                (length,) = _HEADER.unpack_from(data, pos)
                stop = pos + 4 + length
                if length > cap or stop > end:
                    break
                out.append(data[pos + 4 : stop])
                pos = stop
            if pos == end:
                return out
        self.feed(memoryview(data)[pos:] if pos else data)
        while (item := self.next()) is not None:
            out.append(item)
        return out

    def next(self) -> bytes | Oversized | None:
        """The next complete frame body, an :class:`Oversized` notice, or None (need more)."""
        buf = self._buf
        while True:
            avail = len(buf) - self._pos
            if self._skip:
                take = min(self._skip, avail)
                want = self._head_want - len(self._head)
                if want > 0:  # the head may come in several reads
                    self._head += bytes(buf[self._pos : self._pos + min(want, take)])
                self._pos += take
                self._skip -= take
                if self._skip:
                    return None
                return Oversized(self._skip_len, self._head)
            if avail < 4:
                return None
            (length,) = _HEADER.unpack_from(buf, self._pos)
            if length > self._max:
                self._head = b""
                self._head_want = min(HEAD_KEEP, length)
                self._pos += 4
                self._skip = length
                self._skip_len = length
                continue
            if avail < 4 + length:
                return None
            start = self._pos + 4
            body = bytes(buf[start : start + length])
            self._pos = start + length
            if self._pos == len(buf):
                buf.clear()
                self._pos = 0
            return body


def read_frames(
    stream: Any, max_size: int, stop: threading.Event, chunk: int = 65536
) -> Iterator[bytes | Oversized]:
    """Frames from a blocking DTP stream until the peer ends it or ``stop`` is set:
    each a message body, or :class:`Oversized` for a frame over ``max_size`` (skipped
    as it arrived). Stream errors propagate to the caller; a stream that ends inside a
    frame (``stop`` not set) raises :class:`MalformedMessage`. ``chunk``: the most bytes
    read at once, an int of at least 1 (TypeError, ValueError)."""
    _check_size("chunk", chunk)
    decoder = FrameDecoder(max_size)
    while not stop.is_set():
        data = stream.recv(chunk)
        if not data:
            if not stop.is_set() and (decoder.buffered or decoder._skip):
                # the peer went away mid-frame: ending quietly made a truncated stream
                # look like a clean end, the frame's loss unseen by the caller
                raise MalformedMessage("the stream ended inside a frame")
            return
        decoder.feed(data)
        while (item := decoder.next()) is not None:
            yield item
