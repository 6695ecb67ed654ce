"""The RPC fast path: a caller that moves the bytes itself can skip the queue and the
events for the common exchange: a request out and the one frame read next being its
answer (a client), or the one frame read being a request that is answered at once (a
server). The protocol's state stays exact; anything else takes the general path."""

from __future__ import annotations

import heapq
from typing import Any

from dtp.errors import LocalProtocolError
from dtp.messaging import errors as E
from dtp.messaging.protocol_arguments import (
    _check_our_method,
    _check_our_timeout,
)
from dtp.messaging.protocol_messages import (
    _MISSING,
    _REQUEST_HEAD,
    _RESPONSE_HEAD,
    _SHORT_METHOD,
    ERROR,
    MAX_ID,
    MAX_TIMEOUT_MS,
    REQUEST,
    RESPONSE,
    _frame_length,
    _unencodable,
    _unpackb,
)
from dtp.messaging.protocol_state import RpcState


class RpcFastPath(RpcState):
    """The fast-path calls of :class:`~dtp.messaging.protocol.RpcProtocol`."""

    def begin_request(
        self, method: str, params: Any, now: float, timeout: float | None
    ) -> tuple[int, bytes]:
        """Frame a request for the caller to send itself (nothing is queued): returns
        (id, frame). The request is in flight (:meth:`is_pending`) with its deadline
        but no timer: the caller reads the answer with :meth:`take_response`, or
        hands the request to the timers with :meth:`track`. Raises as
        :meth:`send_request` does."""
        if type(method) is not str or not 0 < len(method) <= _SHORT_METHOD:
            _check_our_method(method)
        outgoing = self._outgoing
        if len(outgoing) >= self.max_outgoing:
            raise LocalProtocolError(f"more than {self.max_outgoing} requests in flight")
        if timeout is None:
            timeout_ms = 0
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
        outgoing[request_id] = None if timeout is None else now + timeout
        return request_id, size.to_bytes(4, "big") + body

    def track(self, request_id: int) -> None:
        """Give a request from :meth:`begin_request` its timer, as :meth:`send_request`
        does (when it is still pending and has a deadline)."""
        deadline = self._outgoing.get(request_id)
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, 0, request_id))

    def take_response(self, request_id: int, data: bytes) -> tuple[Any] | None:
        """When ``data`` (bytes just read) is exactly one frame, the RESPONSE to our
        pending request ``request_id``: settle the request and return ``(result,)`` (a
        response's meta is not kept). Otherwise None, with nothing changed: feed
        ``data`` to :meth:`receive_data`."""
        message = self._lone_frame(data, _RESPONSE_HEAD, 8)
        if message is None:
            return None
        _, got_id, result, meta = message
        if (
            type(got_id) is int
            and got_id == request_id
            and (meta is None or type(meta) is dict)
            and self._outgoing.pop(request_id, _MISSING) is not _MISSING
        ):
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
        message = self._lone_frame(data, _REQUEST_HEAD, 11)
        if message is None:
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

    def _lone_frame(self, data: bytes, head: bytes, min_len: int) -> list[Any] | None:
        """The message of ``data`` when it is exactly one frame (at least ``min_len``
        bytes, within the cap) whose body starts with ``head`` (its array and kind, two
        bytes) and decodes, and no partial frame waits in the decoder; else None."""
        n = len(data)
        decoder = self._decoder
        if (
            n < min_len
            or n - 4 > self.max_message_size
            # (struct and a slice: a third of int.from_bytes and startswith here)
            or _frame_length(data)[0] != n - 4
            or data[4:6] != head
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
        return message

    def response_frame(self, request_id: int, result: Any) -> bytes:
        """The frame answering a request from :meth:`take_request` with ``result``: as
        :meth:`send_response` would send it (an error frame for a result that cannot
        be encoded or is too large)."""
        try:
            body: bytes = self._pack([RESPONSE, request_id, result, None])
        except Exception as exc:  # whatever packing the result raised: still an answer
            return self._frame([ERROR, request_id, E.INTERNAL_ERROR, _unencodable(exc), None])
        if len(body) > self.max_message_size:
            return self._frame(
                [ERROR, request_id, E.MESSAGE_TOO_LARGE, E.RESPONSE_TOO_LARGE_TEXT, None]
            )
        return len(body).to_bytes(4, "big") + body

    def error_frame(self, request_id: int, code: int, message: str, data: Any = None) -> bytes:
        """The frame answering a request from :meth:`take_request` with an error, as
        :meth:`send_error` would send it."""
        return self._error_answer(request_id, code, message, data)
