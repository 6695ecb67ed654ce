"""Sending on an RPC stream through the output queue: requests, notifications, answers to
the peer's requests (or dropping them), cancels and acknowledgements."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from dtp.errors import LocalProtocolError
from dtp.messaging import errors as E
from dtp.messaging.protocol_arguments import (
    _check_our_meta,
    _check_our_method,
    _check_our_timeout,
)
from dtp.messaging.protocol_events import (
    RequestReceived,
)
from dtp.messaging.protocol_messages import (
    _MISSING,
    ACK,
    CANCEL,
    MAX_ID,
    MAX_TIMEOUT_MS,
    NOTIFY,
    REQUEST,
    RESPONSE,
    _unencodable,
)
from dtp.messaging.protocol_state import RpcState


class RpcSending(RpcState):
    """The sending calls of :class:`~dtp.messaging.protocol.RpcProtocol`."""

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
