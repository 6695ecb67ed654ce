"""Receiving on an RPC stream: frames in, events out; a frame that breaks the format
becomes a :class:`~dtp.messaging.protocol_events.ProtocolViolation` (and an error frame
back when the peer may wait for one), never an exception."""

from __future__ import annotations

import heapq
from typing import Any

from dtp.messaging import errors as E
from dtp.messaging.framing import HEAD_KEEP, Oversized
from dtp.messaging.protocol_events import (
    AckReceived,
    ErrorReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    ResponseReceived,
    RpcEvent,
)
from dtp.messaging.protocol_messages import (
    _MISSING,
    _SHORT_METHOD,
    ACK,
    CANCEL,
    ERROR,
    MAX_COMPLAINTS,
    MAX_ID,
    MAX_TIMEOUT_MS,
    NOTIFY,
    REQUEST,
    RESPONSE,
    _check_meta,
    _check_method,
    _IdInProgress,
    _peek_kind_and_id,
    _unpackb,
    _valid_id,
)
from dtp.messaging.protocol_state import RpcState


class RpcReceiving(RpcState):
    """The receiving calls of :class:`~dtp.messaging.protocol.RpcProtocol`."""

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
