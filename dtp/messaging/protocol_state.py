"""What one side of an RPC stream knows: its limits, the requests in flight either way,
the deadlines, the events not yet taken and the output queued for the peer, with the
members that read them and the framing every message goes through
(:class:`~dtp.messaging.protocol.RpcProtocol` is made of this and its parts)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from dtp.messaging import errors as E
from dtp.messaging.framing import DEFAULT_MAX_MESSAGE, FrameDecoder
from dtp.messaging.protocol_arguments import (
    _check_count,
)
from dtp.messaging.protocol_events import (
    RequestReceived,
    RpcEvent,
)
from dtp.messaging.protocol_messages import (
    _MISSING,
    ERROR,
    MAX_ID,
    _valid_id,
)


class RpcState:
    """The state of one side of an RPC stream, declared once for every part of
    :class:`~dtp.messaging.protocol.RpcProtocol` (each attribute is described where
    :meth:`__init__` sets it); its queries, its output queue and its framing."""

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
        # (0 made every call fail later with LocalProtocolError, a str failed at the first
        # comparison, deep inside)
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
        # a random first id by default: a client made on a stream another one used
        # (its calls still in flight, their answers on the way) took those answers
        # for its own, numbered from 1 as well -- now they are late answers, dropped
        # (31 bits: a 5-byte msgpack int, and 2**62 calls before the numbers wrap)
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
