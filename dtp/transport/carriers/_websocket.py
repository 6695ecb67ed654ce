"""The WebSocket carrier: DTP records over a WebSocket, one record per binary message
(docs/protocol.md §13), for clients that cannot open a TCP socket (a browser).

A :class:`WebSocketTransport` is an :class:`asyncio.Transport` to the DTP connection's
:class:`~dtp.transport.asyncio._protocol.Protocol`, as a TCP transport is: what the
protocol writes (whole records, batched) goes out one record per binary message, and
each message received is handed to it as the bytes of one record. Under it lies the TCP
connection, and ``websockets``' sans-I/O protocol (:class:`websockets.server.ServerProtocol`,
:class:`websockets.client.ClientProtocol`) does the HTTP upgrade and the framing. The
sans-I/O layer, not ``websockets``' own server, because a server must count a WebSocket
client from its TCP accept, as it counts a TCP client: the upgrade is the first thing
the client sends, so the server's first-message timeout, its bounds on unproven
connections and its per-address lines (dtp.transport._admission) cover the upgrade
and the first record together, and a client that never upgrades holds only its socket.

Carrier rules (docs/protocol.md §13; a breach ends the carrier with a WebSocket close
code, the DTP connection with ``ConnectionLost``): :func:`one_record` a binary message,
at most :data:`MAX_MESSAGE` bytes, the :data:`SUBPROTOCOL` agreed, a browser's
``Origin`` on the allow list (:func:`origin_rule`), and no extension (records are
encrypted: permessage-deflate would only spend CPU on them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from dtp._extras import missing

try:  # (the ws extra: without it, one error naming it)
    from websockets.client import ClientProtocol
    from websockets.exceptions import InvalidHeader, InvalidURI
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Request, Response
    from websockets.protocol import Protocol as WsProtocol
    from websockets.protocol import Side, State
    from websockets.server import ServerProtocol
    from websockets.streams import StreamReader
    from websockets.typing import Origin, Subprotocol
    from websockets.uri import WebSocketURI, parse_uri
except ImportError as exc:
    raise missing("ws", "The WebSocket carrier", exc) from None
try:
    from websockets.speedups import apply_mask
except ImportError:  # (websockets built without its C speedups)
    from websockets.utils import apply_mask

from dtp.errors import ConnectionLost, ConnectionRefused
from dtp.native.reference._limits import MAX_RECORD_PLAINTEXT, RECORD_HEADER_LEN

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_NOT_ONE_RECORD",
    "CLOSE_TEXT",
    "CLOSE_TOO_BIG",
    "MAX_MESSAGE",
    "SUBPROTOCOL",
    "WebSocketTransport",
    "accept_websocket",
    "connect_websocket",
    "one_record",
    "origin_rule",
    "split_records",
]

logger = logging.getLogger(__name__)

SUBPROTOCOL: Final = "dtp.v1"
"""The WebSocket subprotocol (``Sec-WebSocket-Protocol``) a DTP carrier agrees on."""
MAX_MESSAGE: Final = RECORD_HEADER_LEN + MAX_RECORD_PLAINTEXT + 16
"""The largest message: one DATA record of 16384 plaintext bytes (16412 bytes)."""

#: The WebSocket close codes of the carrier (RFC 6455 §7.4.1). A DTP connection's own
#: end travels in its CLOSE record, before the carrier closes with CLOSE_NORMAL.
CLOSE_NORMAL: Final = 1000
CLOSE_NOT_ONE_RECORD: Final = 1002  # a message that is not exactly one record
CLOSE_TEXT: Final = 1003  # a text message: records are binary
CLOSE_TOO_BIG: Final = 1009  # a message above MAX_MESSAGE (websockets' own check)

MAX_REQUEST_HEAD = 16 << 10
"""The most bytes a server reads of a client's upgrade request (a browser's is under a
few KiB, cookies included): an unproven connection holds no more than that, as a TCP
one holds no more than its first record (dtp.transport._admission). Beyond it the
upgrade is refused (HTTP 431)."""
CLOSE_TIMEOUT = 2.0
"""Seconds a closing carrier waits for the peer's half of the close handshake before its
TCP connection is closed anyway."""


def one_record(message: bytes | bytearray | memoryview) -> bool:
    """Whether ``message`` is exactly one record as §2 frames it: a 12-byte header whose
    body length accounts for every byte after it. (The header's fields are the DTP
    connection's to judge, as over TCP.)"""
    size = len(message)
    return size >= RECORD_HEADER_LEN and RECORD_HEADER_LEN + (message[2] | message[3] << 8) == size


def split_records(data: bytes | bytearray | memoryview, held: bytearray) -> list[bytes]:
    """The whole records at the start of ``held`` + ``data``, one bytes object each;
    what is left (a record's first part) stays in ``held`` for the next call. A DTP
    connection writes whole records, so ``held`` is empty between its writes."""
    if held:
        held += data
        view = memoryview(bytes(held))
        held.clear()
    else:
        view = memoryview(data)
    records = []
    at, size = 0, len(view)
    while size - at >= RECORD_HEADER_LEN:
        end = at + RECORD_HEADER_LEN + (view[at + 2] | view[at + 3] << 8)
        if end > size:
            break
        records.append(bytes(view[at:end]))
        at = end
    if at < size:
        held += view[at:]
    return records


def _framed(data: bytes | bytearray | memoryview) -> bytes | bytearray | None:
    """``data``, whole records as a DTP connection writes them, each in one unmasked
    final binary frame (RFC 6455 section 5.2), ready for a server's TCP transport; None
    when ``data`` does not end at a record's end, or holds one above MAX_MESSAGE (none
    of a DTP connection's is: websockets frames it)."""
    size = len(data)
    if size >= RECORD_HEADER_LEN and RECORD_HEADER_LEN + (data[2] | data[3] << 8) == size:
        # one record (most writes): its frame in one piece
        if size < 126:
            return bytes((0x82, size)) + data
        if size > MAX_MESSAGE:
            return None
        return bytes((0x82, 126, size >> 8, size & 0xFF)) + data
    view = memoryview(data)
    out = bytearray()
    at = 0
    while at < size:
        if size - at < RECORD_HEADER_LEN:
            return None
        length = RECORD_HEADER_LEN + (view[at + 2] | view[at + 3] << 8)
        if at + length > size or length > MAX_MESSAGE:
            return None
        if length < 126:
            out += bytes((0x82, length))
        else:
            out += bytes((0x82, 126, length >> 8, length & 0xFF))
        out += view[at : at + length]
        at += length
    return out


def origin_rule(origins: Iterable[str] | None) -> list[Origin | None] | None:
    """``websockets``' ``origins`` for a server's allow list: None (the default) admits
    only upgrades with no ``Origin`` header (clients that are not browsers); a list of
    origins (``"https://app.example"``) admits those too, and ``"*"`` in it admits every
    origin. An upgrade with no Origin is always admitted: only a browser sends one, and
    anything else could send any it liked, so refusing it would protect nothing."""
    if origins is None:
        return [None]
    if isinstance(origins, str):
        raise TypeError("origins must be a list of origins, not one string")
    allowed = list(origins)
    for origin in allowed:
        if not isinstance(origin, str) or not origin:
            raise ValueError(f"an origin must be a non-empty string, not {origin!r}")
    if "*" in allowed:
        return None
    return [None, *(Origin(origin) for origin in allowed)]


#: What websockets' parser waits in between two frames: StreamReader.at_eof
_AT_EOF = getattr(getattr(StreamReader, "at_eof", None), "__code__", None)


def _between_frames(ws: WsProtocol) -> bool:
    """Whether ``ws``'s parser waits for the first byte of a frame, holding nothing (its
    generator waits in ``StreamReader.at_eof`` with an empty buffer); otherwise the next
    bytes are part of a frame for websockets to parse. (A websockets whose parser is
    built otherwise never matches: every frame then goes through it.)"""
    held: Any = getattr(getattr(ws, "reader", None), "buffer", None)
    if _AT_EOF is None or held is None or len(held):
        return False
    gen: Any = getattr(ws, "parser", None)
    for _ in range(8):
        inner = getattr(gen, "gi_yieldfrom", None)
        if inner is None:
            break
        gen = inner
    return getattr(gen, "gi_code", None) is _AT_EOF


class _TcpSide(asyncio.Protocol):
    """The TCP connection under a :class:`WebSocketTransport`: its events go there."""

    def __init__(self, carrier: WebSocketTransport) -> None:
        self.carrier = carrier
        # every read goes straight to the carrier (no call of this class's in between)
        self.data_received = carrier._receive  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream transport, asyncio's or uvloop's: uvloop's are no asyncio.Transport
        # subclasses, so an isinstance check refused every connection on uvloop)
        transport = cast(asyncio.Transport, transport)
        self.carrier._tcp_made(transport)

    def data_received(self, data: bytes) -> None:
        self.carrier._receive(data)

    def eof_received(self) -> bool | None:
        self.carrier._receive_eof()
        return False  # the TCP transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.carrier._tcp_lost(exc)

    def pause_writing(self) -> None:
        self.carrier._pause_writing()

    def resume_writing(self) -> None:
        self.carrier._resume_writing()


class WebSocketTransport(asyncio.Transport):
    """One WebSocket carrier: an :class:`asyncio.Transport` for a DTP connection, over a
    TCP transport and ``websockets``' sans-I/O protocol ``ws``.

    ``on_upgrade(carrier, refusal)`` is told once when the opening handshake ends: with
    None when the WebSocket is open, else with why it is not (the refusal sent to a
    client, or the server's answer to ours). Writes before that, and reads, wait: what
    the protocol wrote is held, and what arrives is handed over once it is open."""

    def __init__(
        self,
        ws: WsProtocol,
        loop: asyncio.AbstractEventLoop,
        on_upgrade: Callable[[WebSocketTransport, str | None], None] | None = None,
    ) -> None:
        super().__init__()
        self._ws = ws
        self._loop = loop
        self._on_upgrade = on_upgrade
        self._tcp: asyncio.Transport | None = None
        self._protocol: asyncio.BaseProtocol | None = None
        self._held = bytearray()  # a record's first part, between writes (split_records)
        self._early: list[bytes] = []  # written before the upgrade ended
        self._fragments: bytearray | None = None  # a message arriving in fragments
        self._pending: collections.deque[bytes] = collections.deque()  # while paused
        self._reading = True
        self._upgraded = False
        self._head = 0  # bytes read before the upgrade was done (MAX_REQUEST_HEAD)
        self._closing = False  # closed here (close, abort, a carrier rule broken)
        self._peer_closed = False  # the peer's close frame came
        self._told_lost = False
        self._error: Exception | None = None  # why the carrier failed, for the protocol
        self._close_timer: asyncio.TimerHandle | None = None
        #: The protocol's data_received (set_protocol), or None
        self._deliver_to: Callable[[bytes], object] | None = None
        #: websockets' side of the carrier was found open, with no extension, between two
        #: frames and holding nothing (_receive): true until it is handed bytes, or told
        #: to close, again -- it changes only then, and the fast path need not look at it
        self._ws_idle = False
        #: The same for writes: websockets' side was found open, a server's with no
        #: extension, no message begun and nothing of its own to send (_frames_out)
        self._ws_out_idle = False
        #: A server's carrier: the frames it reads are masked (RFC 6455 5.1), 4 bytes of
        #: key after the length (_receive)
        self._masked = ws.side is Side.SERVER
        #: The request path, the Origin and the subprotocol, once the upgrade is done
        self.path: str | None = None
        self.origin: str | None = None
        self.subprotocol: str | None = None
        self.refusal: str | None = None

    # -- asyncio.Transport -------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "websocket_path":
            return self.path
        if name == "websocket_origin":
            return self.origin
        if name == "websocket_subprotocol":
            return self.subprotocol
        if self._tcp is None:
            return default
        return self._tcp.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._deliver_to = getattr(protocol, "data_received", None)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing or self._peer_closed or self._tcp is None or self._tcp.is_closing()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False
        if self._tcp is not None and not self._closing:
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._deliver()
        if self._reading and self._tcp is not None and not self._tcp.is_closing():
            self._tcp.resume_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._peer_closed:
            # (as asyncio's transports: nothing goes out after close(); nor after the
            # peer's close frame, past which a WebSocket carries no data)
            return
        if self._ws_out_idle and not self._held:
            tcp = self._tcp
            if tcp is not None and not tcp.is_closing():
                size = len(data)
                if (
                    size >= RECORD_HEADER_LEN
                    and RECORD_HEADER_LEN + (data[2] | data[3] << 8) == size
                    and size <= MAX_MESSAGE
                ):
                    # one record (most writes): framed here, as _framed would (a call
                    # fewer a write)
                    if size < 126:
                        tcp.write(bytes((0x82, size)) + data)
                    else:
                        tcp.write(bytes((0x82, 126, size >> 8, size & 0xFF)) + data)
                    return
                framed = _framed(data)
                if framed is not None:
                    tcp.write(framed)
                    return
        records = split_records(data, self._held)
        if not self._upgraded:
            self._early += records
            return
        ws = self._ws
        if ws.state is not State.OPEN:
            return  # (closing: websockets would raise InvalidState)
        if self._frames_out(records):
            return
        self._ws_out_idle = False
        for record in records:
            ws.send_binary(record)
        self._flush()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False  # a WebSocket has no half-close (close() ends both directions)

    def write_eof(self) -> None:
        raise NotImplementedError("a WebSocket carrier cannot half-close")

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size() if self._tcp is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._tcp.get_write_buffer_limits() if self._tcp is not None else (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def close(self) -> None:
        """Close the carrier after what it holds: the WebSocket close handshake
        (:data:`CLOSE_NORMAL`), then its TCP connection, which closes at the latest
        :data:`CLOSE_TIMEOUT` after. Nothing more is handed to the protocol."""
        self._close(CLOSE_NORMAL, "")

    def abort(self) -> None:
        """Close the TCP connection at once, with no close handshake."""
        self._closing = True
        self._pending.clear()
        if self._tcp is not None:
            self._tcp.abort()
        else:
            self._tell_lost(None)

    # -- the TCP side --------------------------------------------------------------------

    def _tcp_made(self, tcp: asyncio.Transport) -> None:
        self._tcp = tcp
        if isinstance(self._ws, ClientProtocol):
            self._ws.send_request(self._ws.connect())
            self._flush()

    def _receive_ws(self, data: bytes) -> None:
        """What :meth:`_receive` does not take: the upgrade, and every read that is not
        one whole binary message in one frame, through websockets' parser."""
        ws = self._ws
        if not self._upgraded and isinstance(ws, ServerProtocol):
            self._head += len(data)
            if self._head > MAX_REQUEST_HEAD and ws.state is State.CONNECTING:
                return self._refuse_head()
        self._ws_idle = self._ws_out_idle = False
        ws.receive_data(data)
        events = ws.events_received()
        if ws.parser_exc is not None and self._error is None:
            # (websockets failed the connection: a message above MAX_MESSAGE, 1009, or a
            # broken frame, 1002; its close frame is in what _flush sends)
            sent = ws.close_sent
            self._broken(f"{ws.parser_exc}", sent.code if sent is not None else None)
        self._flush()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._request(event)
            elif isinstance(event, Response):
                self._response(event)
        if (
            not self._upgraded
            and self.refusal is None
            and ws.handshake_exc is not None
            and isinstance(ws, ServerProtocol)
        ):
            self._refused_unread(ws.handshake_exc)
        if self._closing or self._peer_closed:
            self._arm_close_timer()

    def _receive_eof(self) -> None:
        self._ws_idle = self._ws_out_idle = False
        self._ws.receive_eof()
        self._flush()

    def _tcp_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self._upgraded and self.refusal is None:
            self.refusal = f"the connection ended before the upgrade ({exc or 'closed'})"
            on_upgrade, self._on_upgrade = self._on_upgrade, None
            if on_upgrade is not None and isinstance(self._ws, ClientProtocol):
                on_upgrade(self, self.refusal)  # (a server's arrival hears connection_lost)
        self._tell_lost(exc)

    def _pause_writing(self) -> None:
        if isinstance(self._protocol, asyncio.Protocol | asyncio.BufferedProtocol):
            self._protocol.pause_writing()

    def _resume_writing(self) -> None:
        if isinstance(self._protocol, asyncio.Protocol | asyncio.BufferedProtocol):
            self._protocol.resume_writing()

    # -- the upgrade ---------------------------------------------------------------------

    def _request(self, request: Request) -> None:
        ws = self._ws
        assert isinstance(ws, ServerProtocol)
        response = ws.accept(request)
        exc = ws.handshake_exc
        if isinstance(exc, InvalidHeader) and exc.name == "Sec-WebSocket-Version":
            # RFC 6455 4.2.2: a version the server does not speak is answered with the
            # versions it does
            response.headers["Sec-WebSocket-Version"] = "13"
        if response.status_code == 101 and ws.subprotocol != SUBPROTOCOL:
            response = ws.reject(
                400,
                f"Failed to open a WebSocket connection: a DTP carrier needs the "
                f"{SUBPROTOCOL} subprotocol (Sec-WebSocket-Protocol).\n",
            )
        ws.send_response(response)
        self._flush()
        if response.status_code == 101:
            self.path = request.path
            self.origin = ws.origin
            self.subprotocol = ws.subprotocol
            self._upgrade_done(None)
        else:
            reason = response.body.decode(errors="replace").strip() or response.reason_phrase
            self._upgrade_done(f"HTTP {response.status_code}: {reason}")

    def _refuse_head(self) -> None:
        """An upgrade request past MAX_REQUEST_HEAD: refused (431), nothing more read."""
        ws = self._ws
        assert isinstance(ws, ServerProtocol)
        ws.send_response(
            ws.reject(431, "Failed to open a WebSocket connection: request head too large.\n")
        )
        self._flush()
        self._upgrade_done(f"HTTP 431: the request head is over {MAX_REQUEST_HEAD} bytes")

    def _refused_unread(self, exc: Exception) -> None:
        """An upgrade request websockets refused before it could be read -- a request
        line (414) or a header line (431) past 8192 bytes, more than 128 header lines
        (431), no HTTP request at all (no answer): its answer, if any, is sent and the
        connection closing. A refused upgrade like any other (counted as one), not a
        client that left before its first record."""
        # (by name: an older websockets has no such classes, and answers none of these)
        kind = type(exc).__name__
        if kind == "RequestLineTooLong":
            why = f"HTTP 414: {exc}"
        elif kind in ("HeaderLineTooLong", "TooManyHeaders"):
            why = f"HTTP 431: {exc}"
        else:
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            why = f"{exc}{cause} (no answer)"
        self._upgrade_done(why)

    def _response(self, response: Response) -> None:
        ws = self._ws
        if ws.state is State.OPEN and ws.subprotocol == SUBPROTOCOL:
            self.subprotocol = ws.subprotocol
            self._upgrade_done(None)
            return
        if ws.handshake_exc is None and response.status_code == 101:
            reason = f"the server did not agree on the {SUBPROTOCOL} subprotocol"
        else:
            reason = f"HTTP {response.status_code} {response.reason_phrase}"
            body = (response.body or b"").decode(errors="replace").strip()
            if body:
                reason += f": {body}"
            elif ws.handshake_exc is not None:
                reason += f": {ws.handshake_exc}"
        self._upgrade_done(reason)

    def _upgrade_done(self, refusal: str | None) -> None:
        if refusal is None:
            self._upgraded = True
            early, self._early = self._early, []
            for record in early:
                self._ws.send_binary(record)
            self._flush()
        else:
            self.refusal = refusal
            self._closing = True
            if self._tcp is not None and not self._tcp.is_closing():
                self._tcp.close()
        on_upgrade, self._on_upgrade = self._on_upgrade, None
        if on_upgrade is not None:
            on_upgrade(self, refusal)

    # -- the common frames, without the sans-I/O layer's generators -------------------------
    #
    # Nearly every read of an open carrier is one whole binary message in one frame, and
    # every write a few records: websockets' parser and serializer cost more than the DTP
    # record inside (bench/web_rows.py). On a server these two are framed here (RFC 6455
    # section 5.2); everything else -- fragments, control frames, partial or several
    # frames in a read, a closing carrier, the client's masked writes -- goes through
    # websockets.

    def _receive(self, data: bytes) -> None:
        """Bytes read from the TCP connection. Handed over here as a message if they are
        exactly one final, unmasked-here binary frame (masked from a client, as RFC 6455
        requires of it) of an open carrier, nothing buffered before it; else to
        websockets (:meth:`_receive_ws`). (One method for both: a call fewer a read.)"""
        size = len(data)
        if size < 2 or data[0] != 0x82 or not self._upgraded or self._closing or self._peer_closed:
            return self._receive_ws(data)  # (0x82: FIN, no RSV bits, a binary frame)
        head2 = data[1]
        masked = self._masked
        if (head2 < 0x80) is masked:
            return self._receive_ws(data)  # (websockets fails it: incorrect masking)
        length = head2 & 0x7F
        if length < 126:
            at = 6 if masked else 2  # (where the key ends, or the payload starts)
        elif length == 126 and size >= 4:
            length = data[2] << 8 | data[3]
            if length > MAX_MESSAGE:
                return self._receive_ws(data)  # (websockets fails it)
            at = 8 if masked else 4
        else:
            return self._receive_ws(data)  # (127: above MAX_MESSAGE, websockets fails it)
        if at + length != size:
            return self._receive_ws(data)
        ws = self._ws
        if not self._ws_idle:
            if (
                ws.state is not State.OPEN
                or ws.extensions
                or getattr(ws, "current_size", 0) is not None  # (a fragmented message open)
                or self._fragments is not None
                or not _between_frames(ws)
            ):
                return self._receive_ws(data)
            self._ws_idle = True
        # (a client's frames are masked; a server's, to a client carrier, are not)
        payload = apply_mask(memoryview(data)[at:], data[at - 4 : at]) if masked else data[at:]
        deliver = self._deliver_to
        if (
            deliver is not None
            and self._reading
            and not self._pending
            and length >= RECORD_HEADER_LEN  # (the payload's length)
            and RECORD_HEADER_LEN + (payload[2] | payload[3] << 8) == length
        ):
            # one record, nothing waiting before it: to the protocol at once (_message)
            deliver(payload)
        else:
            self._message(payload)
        if self._closing or self._peer_closed:
            self._arm_close_timer()

    def _frames_out(self, records: list[bytes]) -> bool:
        """Write ``records`` to the TCP transport, one unmasked binary frame each, when
        this is a server's open carrier with nothing of websockets' own waiting to go
        (else False: websockets frames them)."""
        ws = self._ws
        tcp = self._tcp
        if (
            ws.side is not Side.SERVER
            or tcp is None
            or tcp.is_closing()
            or ws.extensions
            or getattr(ws, "expect_continuation_frame", True)
            or getattr(ws, "writes", True)
        ):
            return False
        self._ws_out_idle = True
        out = bytearray()
        for record in records:
            length = len(record)
            if length < 126:
                out += bytes((0x82, length))
            elif length < 65536:
                out += bytes((0x82, 126, length >> 8, length & 0xFF))
            else:
                return False  # (above MAX_MESSAGE: no DTP record is)
            out += record
        if out:
            tcp.write(out)
        return True

    # -- messages --------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY:
            if frame.fin:
                self._message(frame.data)
            else:
                self._fragments = bytearray(frame.data)
        elif opcode is Opcode.CONT:
            if self._fragments is None:
                return  # (of a text message: failed already)
            self._fragments += frame.data
            if frame.fin:
                message, self._fragments = bytes(self._fragments), None
                self._message(message)
        elif opcode is Opcode.TEXT:
            self._fail(CLOSE_TEXT, "DTP records travel in binary messages")
        elif opcode is Opcode.CLOSE:
            # the peer closes (websockets answered it): what came before is still
            # handed over, nothing comes after
            self._peer_closed = True
        # (PING is answered by websockets; PONG needs nothing)

    def _message(self, message: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        if not one_record(message):
            self._fail(CLOSE_NOT_ONE_RECORD, "a message must hold exactly one DTP record")
            return
        self._pending.append(bytes(message))
        self._deliver()

    def _deliver(self) -> None:
        """Hand what arrived to the protocol, a record at a time, while it reads (it may
        pause its reading, or hand the transport to another protocol, in between)."""
        pending = self._pending
        while pending and self._reading and not self._closing:
            receive = self._deliver_to  # (the protocol's now: it may change in between)
            if receive is None:
                return  # (a client's, before its upgrade is done)
            receive(pending.popleft())

    # -- closing -----------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke a carrier rule: the WebSocket fails with ``code`` (its close
        frame sent, the TCP connection closed), the DTP connection ends with
        ConnectionLost."""
        if self._closing:
            return
        self._broken(reason, code)
        self._ws_idle = self._ws_out_idle = False
        self._ws.fail(code, reason)
        self._flush()
        if self._tcp is not None and not self._tcp.is_closing():
            self._tcp.close()  # (a client does not wait for the server's close either)
        self._arm_close_timer()

    def _broken(self, reason: str, code: int | None) -> None:
        logger.info("WebSocket carrier with %s: %s", self.get_extra_info("peername"), reason)
        self._error = ConnectionLost(f"WebSocket carrier: {reason} (close code {code})")
        self._closing = True
        self._pending.clear()
        self._fragments = None

    def _close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._pending.clear()
        tcp = self._tcp
        if tcp is None:
            self._tell_lost(None)
            return
        if self._ws.state is State.OPEN:
            self._ws_idle = self._ws_out_idle = False
            self._ws.send_close(code, reason)
            self._flush()
            if not self._reading and not tcp.is_closing():
                tcp.resume_reading()  # (the peer's close is read, whatever was paused)
            self._arm_close_timer()
        elif not tcp.is_closing():
            tcp.close()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self._tcp is not None:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        tcp = self._tcp
        if tcp is None or tcp.is_closing():
            if tcp is not None:
                tcp.abort()
            return
        tcp.close()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, tcp.abort)

    def _flush(self) -> None:
        tcp = self._tcp
        if tcp is None:
            return
        chunks = self._ws.data_to_send()
        if not chunks:
            return
        out = [chunk for chunk in chunks if chunk]
        if out and not tcp.is_closing():
            tcp.write(out[0] if len(out) == 1 else b"".join(out))
        if len(out) < len(chunks) and not tcp.is_closing():
            # the sans-I/O layer's end of the stream (SEND_EOF): a server's close
            # handshake is done, or its upgrade refused; a client's server has closed.
            # Closed after what is written goes out.
            tcp.close()

    def _tell_lost(self, exc: Exception | None) -> None:
        if self._told_lost:
            return
        self._told_lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._deliver()  # (what came before the peer's close)
        protocol = self._protocol
        if protocol is not None:
            protocol.connection_lost(self._error or exc)


def accept_websocket(
    loop: asyncio.AbstractEventLoop,
    arrived: Callable[[WebSocketTransport], None],
    refused: Callable[[WebSocketTransport, str], None],
    *,
    origins: Sequence[Origin | None] | None,
) -> asyncio.Protocol:
    """The protocol for one TCP connection a server accepted on its WebSocket listener.
    ``arrived(carrier)`` is called at once (a DTP server counts the connection from its
    TCP accept: the carrier holds its records until the upgrade is done); ``refused``
    when its upgrade is refused (the HTTP answer sent, the connection closing).
    ``origins``: :func:`origin_rule`'s."""
    ws = ServerProtocol(
        origins=origins,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        max_size=MAX_MESSAGE,
    )

    def on_upgrade(carrier: WebSocketTransport, refusal: str | None) -> None:
        if refusal is not None:
            refused(carrier, refusal)

    carrier = WebSocketTransport(ws, loop, on_upgrade)
    side = _TcpSide(carrier)

    class _Accepted(asyncio.Protocol):
        """The listener's protocol: the carrier is made known with the TCP one."""

        def __init__(self) -> None:
            # every read goes straight to the carrier, as _TcpSide's (a call fewer a read)
            self.data_received = carrier._receive  # type: ignore[method-assign]

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            side.connection_made(transport)
            arrived(carrier)

        def eof_received(self) -> bool | None:
            return side.eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            side.connection_lost(exc)

        def pause_writing(self) -> None:
            side.pause_writing()

        def resume_writing(self) -> None:
            side.resume_writing()

    return _Accepted()


def parse_url(url: str) -> WebSocketURI:
    """``url`` (``ws://host[:port]/path`` or ``wss://…``) parsed; ValueError otherwise."""
    try:
        return parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"not a WebSocket URL (ws://host:port/path): {url!r}") from exc


async def connect_websocket(
    url: str,
    protocol: asyncio.BaseProtocol,
    *,
    origin: str | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> WebSocketTransport:
    """Open a WebSocket carrier to ``url`` and hand it to ``protocol`` (its
    ``connection_made``) once the upgrade is done. ``origin``: the ``Origin`` header to
    send, as a browser page at that origin would (None: none, as a program sends);
    ``ssl``: the TLS context of a ``wss://`` URL (None: the system's defaults). Raises
    ConnectionRefused when the server refuses the upgrade (its HTTP answer in the
    reason), OSError when the TCP connect fails."""
    wsuri = parse_url(url)
    loop = asyncio.get_running_loop()
    ws = ClientProtocol(
        wsuri,
        origin=Origin(origin) if origin is not None else None,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        max_size=MAX_MESSAGE,
    )
    upgraded: asyncio.Future[str | None] = loop.create_future()

    def on_upgrade(carrier: WebSocketTransport, refusal: str | None) -> None:
        if not upgraded.done():
            upgraded.set_result(refusal)

    carrier = WebSocketTransport(ws, loop, on_upgrade)
    context = None
    if wsuri.secure:
        import ssl as _ssl  # (loaded for wss:// only)

        context = ssl if ssl is not None else _ssl.create_default_context()
    elif ssl is not None:
        raise ValueError("ssl is for a wss:// URL")
    await loop.create_connection(
        lambda: _TcpSide(carrier),
        wsuri.host,
        wsuri.port,
        ssl=context,
        server_hostname=wsuri.host if context is not None else None,
    )
    try:
        refusal = await upgraded
    except BaseException:
        carrier.abort()
        raise
    if refusal is not None:
        raise ConnectionRefused(f"{url} refused the WebSocket upgrade: {refusal}")
    carrier.set_protocol(protocol)
    protocol.connection_made(carrier)
    carrier._deliver()
    return carrier
