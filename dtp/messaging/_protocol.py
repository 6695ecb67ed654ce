"""The sans-I/O RPC core: messages in, events out (docs/messaging.md §2).

:class:`RpcProtocol` is symmetric — either side may send requests and notifications on
one stream — and never touches a socket, the clock or randomness: callers pass ``now``
(seconds, any monotonic clock) and move bytes with :meth:`RpcProtocol.receive_data` /
:meth:`RpcProtocol.data_to_send`. Timers: :meth:`RpcProtocol.get_timer` /
:meth:`RpcProtocol.handle_timer`.

Bad input never raises out of :meth:`RpcProtocol.receive_data`: a frame that is not a
message becomes a :class:`ProtocolViolation` event and, when the peer could be waiting for
an answer, an error frame back; the stream stays usable (frames are length-prefixed, so
the next one is found regardless).

Its layout, the class whole in the order of a message's life: docs/architecture.md
("apps: messaging").
"""

from __future__ import annotations

import heapq
import math
import random
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgpack

from dtp.errors import LocalProtocolError
from dtp.messaging import errors as E
from dtp.messaging._framing import DEFAULT_MAX_MESSAGE, HEAD_KEEP, FrameDecoder, Oversized
from dtp.messaging._protocol_events import (
    AckReceived,
    ErrorReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    RpcEvent,
)

__all__ = [
    "ACK",
    "CANCEL",
    "ERROR",
    "MAX_COMPLAINTS",
    "MAX_METHOD_LENGTH",
    "NOTIFY",
    "REQUEST",
    "RESPONSE",
    "AckReceived",
    "ErrorReceived",
    "NotificationReceived",
    "ProtocolViolation",
    "RequestCancelled",
    "RequestReceived",
    "RequestTimedOut",
    "ResponseReceived",
    "RpcEvent",
    "RpcProtocol",
]


# -- the message format (docs/messaging.md §2): the kinds, the limits, and the checks
# of what the peer sends (a message read that breaks them is the peer's fault:
# MalformedMessage)

# Message kinds: the first element of every message array.
REQUEST: Final = 0  # [0, id, method, params, timeout_ms, meta]
RESPONSE: Final = 1  # [1, id, result, meta]
ERROR: Final = 2  # [2, id | nil, code, message, data]
NOTIFY: Final = 3  # [3, method, params, meta]
CANCEL: Final = 4  # [4, id]
ACK: Final = 5  # [5, id, signature]

#: Longest method name (UTF-8 bytes).
MAX_METHOD_LENGTH: Final = 256
#: Largest request id (ids are 1..2**63-1).
MAX_ID: Final = 2**63 - 1
#: Longest relative timeout a request may carry (ms; about 49 days).
MAX_TIMEOUT_MS: Final = 2**32 - 1
_MISSING: Any = object()
#: The first two bytes of a RESPONSE's and a REQUEST's body, their array and kind, as
#: a big-endian number (read with the frame's length: _frame_head).
_RESPONSE_HEAD: Final = 0x9401
_REQUEST_HEAD: Final = 0x9600


_unpackb = msgpack.unpackb
#: The length prefixes of the frames whose body is shorter than this many bytes, made
#: once: a small call's prefix is then no new bytes object (begin_request_parts,
#: response_parts)
_HEADS_KEPT: Final = 512
_HEADS: Final = tuple(size.to_bytes(4, "big") for size in range(_HEADS_KEPT))
#: A frame's length and its body's first two bytes, in one call with no slice
_frame_head = struct.Struct(">IH").unpack_from
#: Method names this short are within MAX_METHOD_LENGTH whatever their characters (at
#: most 4 UTF-8 bytes each), so they need no encoding to be checked.
_SHORT_METHOD: Final = MAX_METHOD_LENGTH // 4
#: Most complaints (ERROR frames with a nil id, about frames whose request id could not be
#: read) one protocol sends; later bad frames are only counted. A complaint is larger
#: than the frame it is about, so answering each would let a peer that sends junk and
#: never reads make us queue and send without bound.
MAX_COMPLAINTS: Final = 64


class _IdInProgress(E.MalformedMessage):
    """A REQUEST reusing the id of one still in progress: refused, the first kept."""


def _unencodable(exc: Exception) -> str:
    """The text of an answer whose result cannot be encoded: msgpack's own reason for its
    TypeError / ValueError / OverflowError, only the type name of anything else (a
    mapping whose ``items()`` fails, a dict another thread changes meanwhile...), whose
    text stays private as a handler's exception's does."""
    if isinstance(exc, TypeError | ValueError | OverflowError):
        return f"result not encodable: {exc}"
    return f"result not encodable ({type(exc).__name__})"


def _valid_id(value: Any) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def _check_meta(value: Any) -> Mapping[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise E.MalformedMessage("meta must be a map or nil")


def _check_method(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or (len(value) > _SHORT_METHOD and len(value.encode()) > MAX_METHOD_LENGTH)
    ):
        raise E.MalformedMessage(f"method must be text of 1..{MAX_METHOD_LENGTH} bytes")
    return value


def _peek_kind_and_id(head: bytes) -> tuple[Any, int | None]:
    """The kind and request id of a message from the first bytes of its body (for
    oversized frames): ``(kind, id)``, ``(kind, None)`` or ``(None, None)``."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(head)
    try:
        if unpacker.read_array_header() < 2:
            return None, None
        kind, request_id = unpacker.unpack(), unpacker.unpack()
    except Exception:
        return None, None
    if type(kind) is not int:  # (a bool is no kind: ``true`` would pass for RESPONSE)
        return None, None
    return kind, request_id if _valid_id(request_id) else None


# -- the checks of a caller's arguments: what we send (method names, timeouts, meta) and how
# long we wait. A bad argument is the caller's mistake, a TypeError / ValueError /
# OverflowError, never the wire's MalformedMessage.


def _check_our_method(value: Any) -> None:
    """A method name we send: the caller's mistake is a TypeError / ValueError here,
    not the MalformedMessage (the peer's fault, by the wire's code) of one we read."""
    if not isinstance(value, str):
        raise TypeError(f"a method name is a str, not {type(value).__name__!r}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        # a lone surrogate: the codec's bare UnicodeEncodeError came out here, while
        # begin_request (the blocking client's quiet path) said NotEncodable, a TypeError
        size = 0
    if not 0 < size <= MAX_METHOD_LENGTH:
        raise ValueError(
            f"a method name is 1..{MAX_METHOD_LENGTH} bytes of UTF-8, got {value!r:.80}"
        )


def _check_our_timeout(timeout: Any) -> None:
    """A request's timeout we send: seconds above 0, finite (None: no deadline)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"a timeout is a number of seconds or None, not {type(timeout).__name__!r}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"a timeout must be a finite number of seconds above 0, not {timeout!r}")


def _check_wait(timeout: Any) -> None:
    """A local wait's ``timeout`` (not None), refused as ``socket.settimeout`` refuses
    it (the messaging waits' one check): ValueError for NaN or below 0, OverflowError
    past ``threading.TIMEOUT_MAX`` either way (infinities too), TypeError for what is
    not a number (a str, a bool). Left to the waits, a NaN deadline never passes and
    inf or a str fails deep inside them with no word of why."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"a timeout is a number of seconds, not {type(timeout).__name__!r}")
    if timeout != timeout:
        raise ValueError("a timeout must be 0 or more seconds, not nan")
    # (the socket's order: out of range before negative, so -inf overflows as well)
    if abs(timeout) > threading.TIMEOUT_MAX:
        raise OverflowError(f"timeout out of range (at most {threading.TIMEOUT_MAX:.0f} s)")
    if timeout < 0:
        raise ValueError(f"a timeout must be 0 or more seconds, not {timeout!r}")


def _check_count(what: str, value: object, low: int) -> None:
    """``value`` is an int (TypeError for a bool, a float or a str: not a count) of at
    least ``low`` (ValueError)."""
    if type(value) is not int:
        raise TypeError(f"{what} must be an int, not {type(value).__name__!r}")
    if value < low:
        raise ValueError(f"{what} must be at least {low}, not {value}")


def _check_our_meta(meta: Any) -> None:
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta is a mapping or None, not {type(meta).__name__!r}")


def meta_copy(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A call's ``meta``, copied for the client to add its fees' keys to (None when
    empty); TypeError when not a mapping."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta is a mapping or None, not {type(meta).__name__!r}")
    return dict(meta) if meta else None


_NO_METHOD_YET = object()
"""What :meth:`RpcProtocol.begin_request` compares a name with before any passed its
check: not ``None`` (a name of ``None`` would pass unchecked) nor ``""`` (interned)."""


# -- the fast paths' read sizes (the blocking client and server read with them, by a rule
# written inline in each: a call less a message)

#: What a driver reads at a time while messages are large, or come in pieces.
RECV_SIZE: Final = 256 * 1024
#: The fast paths' reads (the quiet call's answer, the inline server's next request)
#: while messages are small: a DTPSocket reads up to 64 KiB into its lane's own buffer,
#: cheaper than a read into a buffer of the caller's size (about 4 us a call both sides
#: together on one CPU). After a message that did not come whole in one short read they
#: read RECV_SIZE, which takes large messages faster (what does not fit a read goes
#: through the general path), until one comes whole and short again.
QUICK_RECV_SIZE: Final = 64 * 1024


class RpcProtocol:
    """One side of an RPC stream.

    ``max_message_size`` caps frames both ways; ``max_outgoing`` caps our requests in
    flight (:class:`~dtp.messaging.errors.PayloadTooLarge` /
    :class:`~dtp.errors.LocalProtocolError` beyond); ``max_incoming`` caps the peer's
    requests we have not answered yet — beyond it, requests are answered at once with
    ``SERVER_BUSY`` (requests that ended but whose work the caller still holds count
    too: ``held_incoming``). Complaints about frames whose id cannot be read (ERROR with
    a nil id) stop after :data:`MAX_COMPLAINTS`, so that a peer which sends junk and
    never reads cannot make us queue output without bound. ``first_id``: the id of our
    first request (default: a random one, so that a client on a stream another one used
    does not take that one's answers still on the way for its own).
    """

    # -- state ---------------------------------------------------------------------------------

    max_message_size: int
    max_outgoing: int
    max_incoming: int
    _decoder: FrameDecoder
    _pack: Callable[[Any], bytes]
    _out: list[bytes]
    _events: deque[RpcEvent]
    _next_id: int
    _outgoing: dict[int, float | None]
    _incoming: dict[int, RequestReceived]
    held_incoming: int
    _timers: list[tuple[float, int, int]]
    _last_timeout: float | None
    _last_timeout_ms: int
    _last_method: object
    violations: int
    late_responses: int
    busy_rejections: int
    _complaints: int

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_outgoing: int = 65536,
        max_incoming: int = 4096,
        first_id: int | None = None,
    ) -> None:
        # (checked here, so that 0 or a str is a ValueError now, not a failure of every
        # later call deep inside: tests/messaging/test_arguments.py)
        _check_count("max_message_size", max_message_size, 1)
        _check_count("max_outgoing", max_outgoing, 1)
        _check_count("max_incoming", max_incoming, 1)
        self.max_message_size = max_message_size
        self.max_outgoing = max_outgoing
        self.max_incoming = max_incoming
        self._decoder = FrameDecoder(max_message_size)
        # one packer for the protocol's life: msgpack.packb builds one (with a 256 KiB
        # buffer) per message; the protocol is not shared between threads unlocked
        self._pack = msgpack.Packer(use_bin_type=True, buf_size=4096).pack
        self._out: list[bytes] = []
        self._events: deque[RpcEvent] = deque()
        if first_id is not None and not _valid_id(first_id):
            raise ValueError(f"first_id must be an int from 1 to {MAX_ID}, not {first_id!r}")
        # (first_id: see the class doc; 31 bits: a 5-byte msgpack int, 2**62 calls to wrap)
        self._next_id = random.randrange(1, 1 << 31) if first_id is None else first_id
        #: our requests in flight: id -> deadline (None = none)
        self._outgoing: dict[int, float | None] = {}
        #: the peer's requests we have not answered: id -> the request's event, which
        #: tells one request from a later one of the same id (the peer may reuse the id
        #: of a request that ended: cancelled, or its deadline passed)
        self._incoming: dict[int, RequestReceived] = {}
        #: Requests of the peer's that ended (cancelled, expired) but whose work the
        #: caller still holds (one queued for a worker pool, say): the caller raises and
        #: lowers it, and they count against ``max_incoming`` meanwhile -- a peer that
        #: sends requests and cancels them at once would otherwise make the caller
        #: queue work without bound, every slot freed as soon as it was taken.
        self.held_incoming = 0
        self._timers: list[tuple[float, int, int]] = []  # (deadline, side 0=out 1=in, id)
        # begin_request: the last timeout seen, and its value on the wire
        self._last_timeout: float | None = None
        self._last_timeout_ms = 0
        # the last method name that passed the check (none yet: a marker no name is)
        self._last_method: object = _NO_METHOD_YET
        #: Counters for monitoring.
        self.violations = 0
        self.late_responses = 0
        self.busy_rejections = 0
        self._complaints = 0

    @property
    def in_flight(self) -> int:
        """Our requests awaiting an answer."""
        return len(self._outgoing)

    @property
    def pending_incoming(self) -> int:
        """The peer's requests we still owe an answer."""
        return len(self._incoming)

    def is_pending(self, request_id: int) -> bool:
        """Whether our request ``request_id`` still awaits an answer."""
        return request_id in self._outgoing

    def forget_request(self, request_id: int) -> bool:
        """Forget our request ``request_id`` without a word to the peer (unlike
        :meth:`cancel`: for a stream closing, where nothing more goes); whether it was
        pending."""
        return self._outgoing.pop(request_id, _MISSING) is not _MISSING

    @property
    def unanswered(self) -> Mapping[int, RequestReceived]:
        """The peer's requests we still owe an answer, by id, each with its event (a
        later request may reuse the id of one that ended). A live read-only view, the
        same object for the protocol's life: a driver may keep it and look a request up
        with no call of ours per request."""
        return self._incoming

    @property
    def output(self) -> Sequence[bytes]:
        """What is queued for the peer, oldest first (:meth:`data_to_send` takes it
        all). A live read-only view, the same object for the protocol's life: a driver
        may keep it and test it for output with no call of ours per message."""
        return self._out

    @property
    def queued_bytes(self) -> int:
        """The bytes queued for the peer."""
        return sum(map(len, self._out))

    def put_back(self, data: bytes) -> None:
        """Queue ``data`` ahead of everything else: the part of what
        :meth:`data_to_send` returned that the stream did not take (it may end inside a
        frame, so it goes first)."""
        self._out.insert(0, data)

    def clear_output(self) -> None:
        """Drop everything queued for the peer (the stream failed: nothing more goes)."""
        self._out.clear()

    def data_to_send(self) -> bytes:
        """Everything queued for the peer (empty when nothing)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _frame(self, message: list[Any]) -> bytes:
        try:
            body: bytes = self._pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise E.not_encodable(exc) from exc
        if len(body) > self.max_message_size:
            raise E.PayloadTooLarge(
                f"message of {len(body)} bytes exceeds the cap of {self.max_message_size}"
            )
        return len(body).to_bytes(4, "big") + body

    def _error_frame(self, request_id: int | None, code: int, text: str) -> None:
        self._out.append(self._frame([ERROR, request_id, code, text, None]))

    def _error_answer(self, request_id: int | None, code: int, message: str, data: Any) -> bytes:
        """The ERROR frame for an answer: without ``data`` (and with the message cut to
        200 characters) when that frame cannot be encoded or is over the cap, whatever
        encoding raised (an int beyond 64 bits in ``data`` raises OverflowError): an
        exception here went up through the server's loop, its request unanswered (the
        stream ended, inline)."""
        try:
            return self._frame([ERROR, request_id, code, message, data])
        except Exception:
            pass
        try:
            return self._frame([ERROR, request_id, code, str(message)[:200], None])
        except Exception:  # (the code itself: an int beyond 64 bits)
            return self._frame(
                [ERROR, request_id, E.INTERNAL_ERROR, "the error could not be encoded", None]
            )

    def _event(self, event: RpcEvent) -> None:
        self._events.append(event)

    # -- sending -------------------------------------------------------------------------------

    def send_request(
        self,
        method: str,
        params: Any = None,
        *,
        now: float = 0.0,
        timeout: float | None = None,
        meta: Mapping[str, Any] | None = None,
        timer: bool = True,
    ) -> int:
        """Queue a request; returns its id. ``timeout`` (seconds) sets the deadline
        ``now + timeout``, which is also sent (relative, in ms) so the peer can give up.
        ``timer=False``: the caller keeps the deadline itself (it never calls
        :meth:`handle_timer`, whose timers would pile up unexpired) and ends the request
        with :meth:`cancel` when it passes; the peer is told it all the same."""
        _check_our_method(method)
        _check_our_meta(meta)
        if len(self._outgoing) >= self.max_outgoing:
            raise LocalProtocolError(f"more than {self.max_outgoing} requests in flight")
        request_id = self._next_id
        timeout_ms = 0
        if timeout is not None:
            _check_our_timeout(timeout)
            timeout_ms = min(MAX_TIMEOUT_MS, max(1, round(timeout * 1000)))
        self._out.append(self._frame([REQUEST, request_id, method, params, timeout_ms, meta]))
        self._next_id = request_id + 1 if request_id < MAX_ID else 1
        deadline = None if timeout is None else now + timeout
        self._outgoing[request_id] = deadline
        if deadline is not None and timer:
            heapq.heappush(self._timers, (deadline, 0, request_id))
        return request_id

    def check_request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        meta: Mapping[str, Any] | None = None,
        reserve: int = 0,
    ) -> None:
        """Raise as :meth:`send_request` would for this request, with ``reserve`` bytes
        of the cap kept for meta the caller adds afterwards; nothing is queued. For a
        paid call, whose receipt and prepaid escrow are made before the request: a
        request that cannot be sent must not be paid for."""
        _check_our_method(method)
        _check_our_meta(meta)
        if timeout is not None:
            _check_our_timeout(timeout)
        if len(self._outgoing) >= self.max_outgoing:
            raise LocalProtocolError(f"more than {self.max_outgoing} requests in flight")
        # (the largest id and timeout: their encodings are the longest)
        try:
            body: bytes = self._pack([REQUEST, MAX_ID, method, params, MAX_TIMEOUT_MS, meta])
        except (TypeError, ValueError, OverflowError) as exc:
            raise E.not_encodable(exc) from exc
        if len(body) + reserve > self.max_message_size:
            raise E.PayloadTooLarge(
                f"message of {len(body)} bytes (and {reserve} for its fee's meta) exceeds "
                f"the cap of {self.max_message_size}"
            )

    def send_notification(
        self, method: str, params: Any = None, *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Queue a notification (no answer)."""
        _check_our_method(method)
        _check_our_meta(meta)
        self._out.append(self._frame([NOTIFY, method, params, meta]))

    def send_response(
        self,
        request_id: int,
        result: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        request: RequestReceived | None = None,
    ) -> bytes | None:
        """Answer the peer's request. Returns the response's msgpack body (what an
        acknowledgement signs the hash of), or None when the request is no longer
        pending (cancelled, expired, or answered) and nothing was sent. ``request``:
        the request's :class:`RequestReceived`, for a caller whose handlers may end
        after their request did -- nothing is sent when the request pending under
        ``request_id`` is a later one (the peer reused the id).

        A result too large for the cap is replaced by a ``MESSAGE_TOO_LARGE`` error
        (message ``E.RESPONSE_TOO_LARGE_TEXT``: the caller raises ResponseTooLarge).
        """
        if not self._settle(request_id, request):
            return None
        try:
            body: bytes = self._pack([RESPONSE, request_id, result, meta])
        except Exception as exc:  # whatever packing the result raised: still an answer
            self._error_frame(request_id, E.INTERNAL_ERROR, _unencodable(exc))
            return None
        if len(body) > self.max_message_size:
            self._error_frame(request_id, E.MESSAGE_TOO_LARGE, E.RESPONSE_TOO_LARGE_TEXT)
            return None
        self._out.append(len(body).to_bytes(4, "big") + body)
        return body

    def send_error(
        self,
        request_id: int | None,
        code: int,
        message: str,
        data: Any = None,
        *,
        request: RequestReceived | None = None,
    ) -> bool:
        """Answer the peer's request with an error (``request_id`` None: a complaint about
        a frame whose id is unknown). Returns False when the request is not pending
        (``request``: as for :meth:`send_response`)."""
        if request_id is not None and not self._settle(request_id, request):
            return False
        self._out.append(self._error_answer(request_id, code, message, data))
        return True

    def drop_request(self, request_id: int, *, request: RequestReceived | None = None) -> bool:
        """Forget the peer's request ``request_id`` without answering it (the peer
        waits until its deadline): for a side that cannot queue more answers to a peer
        that does not read them. False if it was not pending (``request``: as for
        :meth:`send_response`)."""
        return self._settle(request_id, request)

    def _settle(self, request_id: int, request: RequestReceived | None) -> bool:
        """Forget the peer's pending request ``request_id`` (answered or dropped) --
        only when it is ``request``, if given; False when there is none to forget."""
        incoming = self._incoming
        if request_id not in incoming or (
            request is not None and incoming[request_id] is not request
        ):
            return False
        del incoming[request_id]
        return True

    def cancel(self, request_id: int) -> bool:
        """Stop waiting for our request and tell the peer (CANCEL). False if not pending."""
        if self._outgoing.pop(request_id, _MISSING) is _MISSING:
            return False
        self._out.append(self._frame([CANCEL, request_id]))
        return True

    def send_ack(self, request_id: int, signature: bytes) -> None:
        """Acknowledge the peer's response to our request ``request_id`` (response escrow)."""
        self._out.append(self._frame([ACK, request_id, bytes(signature)]))

    # -- fast path -----------------------------------------------------------------------------

    def begin_request(
        self, method: str, params: Any, now: float, timeout: float | None, tracked: bool = False
    ) -> tuple[int, bytes]:
        """Frame a request for the caller to send itself (nothing is queued): returns
        (id, frame). The request is in flight (:meth:`is_pending`) with its deadline
        but no timer: the caller reads the answer with :meth:`take_response`, or
        hands the request to the timers with :meth:`track` (``tracked``: at once, as
        :meth:`track` would, with no call of its own). Raises as :meth:`send_request`
        does."""
        request_id, head, body = self.begin_request_parts(method, params, now, timeout, tracked)
        return request_id, head + body

    def begin_request_parts(
        self, method: str, params: Any, now: float, timeout: float | None, tracked: bool = False
    ) -> tuple[int, bytes, bytes]:
        """:meth:`begin_request`, the frame in two parts: (id, length prefix, body), for
        a writer that seals them as one (``DTPStreamWriter.writelines``) without joining
        them."""
        if method is not self._last_method:
            # (a str checked once stays good: a caller's usual name, the same object
            # each call, is not checked again)
            if type(method) is not str or not 0 < len(method) <= _SHORT_METHOD:
                _check_our_method(method)
            self._last_method = method
        outgoing = self._outgoing
        if len(outgoing) >= self.max_outgoing:
            raise LocalProtocolError(f"more than {self.max_outgoing} requests in flight")
        if timeout is None:
            timeout_ms = 0
        elif timeout is self._last_timeout:
            timeout_ms = self._last_timeout_ms  # (the very object checked last time)
        elif timeout == self._last_timeout and type(timeout) is type(self._last_timeout):
            # (the type too: True == 1, and a bool is no timeout)
            timeout_ms = self._last_timeout_ms
        else:
            _check_our_timeout(timeout)
            timeout_ms = min(MAX_TIMEOUT_MS, max(1, round(timeout * 1000)))
            self._last_timeout, self._last_timeout_ms = timeout, timeout_ms
        request_id = self._next_id
        try:
            body: bytes = self._pack([REQUEST, request_id, method, params, timeout_ms, None])
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, UnicodeEncodeError):
                # a short name skipped the method check above: refused as send_request
                # refuses it (ValueError), not as unencodable params (NotEncodable)
                _check_our_method(method)
            raise E.not_encodable(exc) from exc
        size = len(body)
        if size > self.max_message_size:
            raise E.PayloadTooLarge(
                f"message of {size} bytes exceeds the cap of {self.max_message_size}"
            )
        self._next_id = request_id + 1 if request_id < MAX_ID else 1
        if timeout is None:
            outgoing[request_id] = None
        else:
            outgoing[request_id] = deadline = now + timeout
            if tracked:
                heapq.heappush(self._timers, (deadline, 0, request_id))
        return request_id, _HEADS[size] if size < _HEADS_KEPT else size.to_bytes(4, "big"), body

    def track(self, request_id: int) -> None:
        """Give a request from :meth:`begin_request` its timer, as :meth:`send_request`
        does (when it is still pending and has a deadline)."""
        deadline = self._outgoing.get(request_id)
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, 0, request_id))

    def take_response(self, request_id: int, data: bytes) -> tuple[Any] | None:
        """When ``data`` (bytes just read) is exactly one frame, the RESPONSE to our
        pending request ``request_id``: settle the request (its timer, if :meth:`track`
        gave it one, goes) and return ``(result,)`` (a response's meta is not kept).
        Otherwise None, with nothing changed: feed ``data`` to :meth:`receive_data`."""
        # exactly one whole frame, nothing partial in the decoder (checked here, not in
        # a helper shared with take_request: a Python call less per call; struct
        # reads the length and the body's head at once, with no slice's bytes)
        n = len(data)
        decoder = self._decoder
        if (
            n < 8
            or n - 4 > self.max_message_size
            or _frame_head(data) != (n - 4, _RESPONSE_HEAD)
            or decoder._buf
            or decoder._skip
        ):
            return None
        try:
            # msgpack's defaults are raw=False and use_list=True: only the map-key
            # rule is ours (keyword parsing is a measurable part of a small call)
            message: list[Any] = _unpackb(data[4:], strict_map_key=False)
        except Exception:
            return None
        _, got_id, result, meta = message
        if (
            type(got_id) is int
            and got_id == request_id
            and (meta is None or type(meta) is dict)
            and self._outgoing.pop(request_id, _MISSING) is not _MISSING
        ):
            timers = self._timers
            if timers:
                # its timer, when it is the next due (a sequential caller's, from
                # track()): dropped now, as the next get_timer() would drop it
                head = timers[0]
                if head[2] == request_id and head[1] == 0:
                    heapq.heappop(timers)
            return (result,)
        return None

    def take_request(self, data: bytes) -> list[Any] | None:
        """When ``data`` (bytes just read) is exactly one frame holding a well-formed
        REQUEST that can be taken now, and no event waits: the message ``[kind, id,
        method, params, timeout_ms, meta]``, which the caller answers at once with
        :meth:`response_frame` or :meth:`error_frame` (before anything else happens on
        this protocol: it is never pending), or hands back with
        :meth:`admit_request`. Otherwise None, with nothing changed: feed ``data`` to
        :meth:`receive_data`."""
        if self._events:
            return None
        # (take_response's checks, for a REQUEST: inline for the same reason)
        n = len(data)
        decoder = self._decoder
        if (
            n < 11
            or n - 4 > self.max_message_size
            or _frame_head(data) != (n - 4, _REQUEST_HEAD)
            or decoder._buf
            or decoder._skip
        ):
            return None
        try:
            message: list[Any] = _unpackb(data[4:], strict_map_key=False)
        except Exception:
            return None
        _, request_id, method, _, timeout_ms, meta = message
        if (
            type(request_id) is int
            and 0 < request_id <= MAX_ID
            and type(method) is str
            and 0 < len(method) <= _SHORT_METHOD
            and type(timeout_ms) is int
            and 0 <= timeout_ms <= MAX_TIMEOUT_MS
            and (meta is None or type(meta) is dict)
            and request_id not in self._incoming
            and len(self._incoming) + self.held_incoming < self.max_incoming
        ):
            return message
        return None

    def response_frame(self, request_id: int, result: Any) -> bytes:
        """The frame answering a request from :meth:`take_request` with ``result``: as
        :meth:`send_response` would send it (an error frame for a result that cannot
        be encoded or is too large)."""
        head, body = self.response_parts(request_id, result)
        return head + body

    def response_parts(self, request_id: int, result: Any) -> tuple[bytes, bytes]:
        """:meth:`response_frame` in two parts, (length prefix, body), as
        :meth:`begin_request_parts` gives a request's (an error frame comes whole, as
        the body, after an empty prefix)."""
        try:
            body: bytes = self._pack([RESPONSE, request_id, result, None])
        except Exception as exc:  # whatever packing the result raised: still an answer
            error = [ERROR, request_id, E.INTERNAL_ERROR, _unencodable(exc), None]
            return b"", self._frame(error)
        size = len(body)
        if size > self.max_message_size:
            error = [ERROR, request_id, E.MESSAGE_TOO_LARGE, E.RESPONSE_TOO_LARGE_TEXT, None]
            return b"", self._frame(error)
        return _HEADS[size] if size < _HEADS_KEPT else size.to_bytes(4, "big"), body

    def error_frame(self, request_id: int, code: int, message: str, data: Any = None) -> bytes:
        """The frame answering a request from :meth:`take_request` with an error, as
        :meth:`send_error` would send it."""
        return self._error_answer(request_id, code, message, data)

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> None:
        """Feed bytes from the peer; events become available from :meth:`next_event`."""
        for item in self._decoder.frames(data):
            if isinstance(item, Oversized):
                self._oversized(item)
            else:
                self._handle_body(item, now)

    def next_event(self) -> RpcEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def events(self) -> list[RpcEvent]:
        """All pending events at once."""
        out = list(self._events)
        self._events.clear()
        return out

    def admit_request(self, message: list[Any], now: float) -> None:
        """A request from :meth:`take_request` that the caller does not answer at once:
        it becomes pending and a :class:`RequestReceived` event, as it would have from
        :meth:`receive_data` (``now``: when it was read)."""
        self._on_request(message, now)

    def _violation(
        self, error: E.MessagingProtocolError, request_id: int | None, reply: bool
    ) -> None:
        self.violations += 1
        if reply:
            if (
                request_id is not None
                and request_id in self._incoming
                and not isinstance(error, _IdInProgress)
            ):
                # a broken frame (too large, the wrong length...) naming a request in
                # progress: complained about without its id, as one msgpack cannot
                # decode (_handle_body) -- the request in progress keeps its own answer
                request_id = None
            if request_id is not None:
                # (nothing pending is dropped: a broken frame never became a request,
                # and the first request of a reused id goes on -- its handler runs,
                # and its answer is still owed)
                self._error_frame(request_id, error.wire_code, str(error))
            elif self._complaints < MAX_COMPLAINTS:
                self._complaints += 1
                self._error_frame(None, error.wire_code, str(error))
        self._event(ProtocolViolation(error, request_id))

    def _unreadable_answer(self, error: E.MessagingProtocolError, request_id: int) -> None:
        """The answer to our request ``request_id`` cannot be taken (too large, not
        msgpack): a violation, and that call fails now rather than at its deadline (the
        peer is not told: it has nothing left to do for it)."""
        self.violations += 1
        self._event(ProtocolViolation(error, request_id))
        if self._outgoing.pop(request_id, _MISSING) is not _MISSING:
            self._event(ErrorReceived(request_id, error))

    def _oversized(self, item: Oversized) -> None:
        kind, request_id = _peek_kind_and_id(item.head)
        error = E.MessageTooLarge(
            f"message of {item.length} bytes exceeds the cap of {self.max_message_size}"
        )
        if kind in (RESPONSE, ERROR) and request_id is not None:
            # the answer to one of our requests, too large to take
            self._unreadable_answer(error, request_id)
            return
        self._violation(error, request_id if kind == REQUEST else None, reply=True)

    def _handle_body(self, body: bytes, now: float) -> None:
        try:
            message = _unpackb(body, raw=False, strict_map_key=False, use_list=True)
        except Exception as exc:  # not msgpack: decode_body's words, without a second try
            error = E.MalformedMessage(f"frame is not valid msgpack ({type(exc).__name__})")
            # its head may still name a request (a map with an array key, say, which
            # msgpack packs from a tuple key but cannot unpack): that request is answered,
            # or that call of ours fails, now rather than at its deadline (or never)
            kind, request_id = (
                _peek_kind_and_id(body[:HEAD_KEEP])
                if len(body) > 2 and (0x92 <= body[0] <= 0x9F or body[0] in (0xDC, 0xDD))
                else (None, None)  # not an array of 2 or more: nothing to peek (cheaply)
            )
            if kind in (RESPONSE, ERROR) and request_id is not None:
                self._unreadable_answer(error, request_id)
                return
            if kind != REQUEST or request_id in self._incoming:
                request_id = None  # (an id in progress keeps its own answer)
            self._violation(error, request_id, reply=True)
            return
        if not isinstance(message, list) or not message or type(message[0]) is not int:
            self._violation(E.MalformedMessage("a message is an array [kind, ...]"), None, True)
            return
        kind = message[0]
        try:
            if kind == RESPONSE:
                self._on_response(message, body)
            elif kind == REQUEST:
                self._on_request(message, now)
            elif kind == NOTIFY:
                if len(message) != 4:
                    raise E.MalformedMessage("NOTIFY has 4 elements")
                self._event(
                    NotificationReceived(
                        _check_method(message[1]), message[2], _check_meta(message[3])
                    )
                )
            elif kind == ERROR:
                self._on_error(message)
            elif kind == CANCEL:
                if len(message) != 2 or not _valid_id(message[1]):
                    raise E.MalformedMessage("CANCEL is [4, id]")
                if self._incoming.pop(message[1], _MISSING) is not _MISSING:
                    self._event(RequestCancelled(message[1], "cancelled"))
            elif kind == ACK:
                if len(message) != 3 or not _valid_id(message[1]):
                    raise E.MalformedMessage("ACK is [5, id, signature]")
                if not isinstance(message[2], bytes) or len(message[2]) != 64:
                    raise E.MalformedMessage("an ACK signature is 64 bytes")
                self._event(AckReceived(message[1], message[2]))
            else:
                raise E.MalformedMessage(f"unknown message kind {kind}")
        except E.MessagingProtocolError as exc:
            request_id = message[1] if kind == REQUEST and len(message) > 1 else None
            if request_id is not None and not _valid_id(request_id):
                request_id = None
            # never answer an ERROR with an ERROR (two broken peers would loop)
            self._violation(exc, request_id, reply=kind != ERROR)
            if kind in (RESPONSE, ERROR) and len(message) > 1:
                # a broken answer to one of our requests, its id readable: that call
                # fails now (rather than wait for its deadline, or for good without one)
                answered = message[1]
                if _valid_id(answered) and self._outgoing.pop(answered, _MISSING) is not _MISSING:
                    self._event(ErrorReceived(answered, exc))

    def _on_request(self, message: list[Any], now: float) -> None:
        if len(message) != 6:
            raise E.MalformedMessage("REQUEST has 6 elements")
        _, request_id, method, params, timeout_ms, meta = message
        # the checks of _valid_id, _check_method and _check_meta, inline: every request
        # passes here
        if type(request_id) is not int or not 0 < request_id <= MAX_ID:
            raise E.MalformedMessage("request id must be an integer in 1..2**63-1")
        if type(method) is not str or not 0 < len(method) <= _SHORT_METHOD:
            method = _check_method(method)
        if type(timeout_ms) is not int or not 0 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise E.MalformedMessage("timeout_ms must be an integer in 0..2**32-1")
        if meta is not None and type(meta) is not dict:
            meta = _check_meta(meta)
        if request_id in self._incoming:
            raise _IdInProgress(f"request id {request_id} is already in progress")
        if len(self._incoming) + self.held_incoming >= self.max_incoming:
            self.busy_rejections += 1
            self._error_frame(request_id, E.SERVER_BUSY, "too many requests in progress")
            return
        deadline = None if timeout_ms == 0 else now + timeout_ms / 1000
        event = RequestReceived(request_id, method, params, deadline, meta)
        self._incoming[request_id] = event
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, 1, request_id))
        self._events.append(event)

    def _on_response(self, message: list[Any], body: bytes) -> None:
        if len(message) != 4:
            raise E.MalformedMessage("RESPONSE is [1, id, result, meta]")
        _, request_id, result, meta = message
        if type(request_id) is not int or not 0 < request_id <= MAX_ID:
            raise E.MalformedMessage("RESPONSE is [1, id, result, meta]")
        if meta is not None and type(meta) is not dict:
            meta = _check_meta(meta)
        if self._outgoing.pop(request_id, _MISSING) is _MISSING:
            self.late_responses += 1  # cancelled or timed out: drop it
            return
        self._events.append(ResponseReceived(request_id, result, meta, body))

    def _on_error(self, message: list[Any]) -> None:
        if len(message) != 5:
            raise E.MalformedMessage("ERROR has 5 elements")
        _, request_id, code, text, data = message
        if type(code) is not int or not isinstance(text, str):
            raise E.MalformedMessage("ERROR code must be an integer and message text")
        error = E.remote_error(code, text[:1024], data)
        if request_id is None:
            self.violations += 1
            self._event(
                ProtocolViolation(E.MalformedMessage("the peer reported an error"), None, error)
            )
            return
        if not _valid_id(request_id):
            raise E.MalformedMessage("ERROR id must be nil or a request id")
        if self._outgoing.pop(request_id, _MISSING) is _MISSING:
            self.late_responses += 1
            return
        self._event(ErrorReceived(request_id, error))

    # -- timers --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (the earliest live deadline)."""
        timers = self._timers
        while timers:
            deadline, side, request_id = timers[0]
            if side == 0:
                if self._outgoing.get(request_id, _MISSING) == deadline:
                    return deadline
            else:
                request = self._incoming.get(request_id)
                if request is not None and request.deadline == deadline:
                    return deadline
            heapq.heappop(timers)  # answered, cancelled or reused: stale
        return None

    def handle_timer(self, now: float) -> None:
        """Expire deadlines up to ``now``: our requests time out (and are cancelled at the
        peer); the peer's requests are dropped (it has stopped waiting)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, side, request_id = heapq.heappop(timers)
            if side == 0:
                if self._outgoing.get(request_id, _MISSING) == deadline:
                    del self._outgoing[request_id]
                    self._out.append(self._frame([CANCEL, request_id]))
                    self._event(RequestTimedOut(request_id))
            else:
                request = self._incoming.get(request_id)
                if request is not None and request.deadline == deadline:
                    del self._incoming[request_id]
                    self._event(RequestCancelled(request_id, "deadline"))
