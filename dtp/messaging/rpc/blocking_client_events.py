"""What settles the calls of a blocking RPC client (:class:`ClientEvents`): the protocol's
events handed to their calls, a deadline that ran out, a failure that ends them all, the
reader woken or interrupted, and the notification handlers run in order."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.protocol import (
    ErrorReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    RpcEvent,
)
from dtp.messaging.rpc.blocking_client_state import ClientState

if TYPE_CHECKING:
    from dtp.messaging.rpc.blocking_client_state import RpcCall

# the client's public module names the logger: a handler's failure is logged where it was
logger = logging.getLogger("dtp.messaging.rpc.blocking_client")

#: Most answers a client keeps queued for a peer that does not take them (refusals of
#: the peer's requests: a client serves nothing); beyond, the peer's requests are dropped
#: unanswered, so a peer that sends requests and never reads cannot grow our memory.
_MAX_QUEUED_OUT = 256


class ClientEvents(ClientState):
    """How calls of a blocking RPC client end: by their events, deadline, or a failure."""

    def _fail_all(self, error: BaseException) -> None:
        """(lock held)"""
        if self._closed is None:
            self._closed = error
        calls, self._calls = self._calls, {}
        self._fees.all_unanswered()
        for call in calls.values():
            call._finish(None, error)
        self._wake_followers()

    def _interrupt_reader(self) -> None:
        """End the read another thread waits in for everybody, so that it sees what
        changed (a call cancelled, the client closed) now rather than at the end of
        its read slice: a DTPSocket stream can (``interrupt_recv``); on another
        stream the read ends with its slice (up to ``_READ_SLICE``)."""
        interrupt = getattr(self._stream, "interrupt_recv", None)
        if interrupt is not None:
            with contextlib.suppress(DTPError, OSError):
                interrupt()

    def _dispatch(self, events: list[RpcEvent]) -> None:
        """Hand events to their calls (lock held)."""
        for event in events:
            if isinstance(event, ResponseReceived):
                # whether it is acknowledged is the fee engine's rule (ClientFees.answered)
                ack = self._fees.answered(event.request_id, event.body)
                if ack is not None:
                    self._proto.send_ack(event.request_id, ack)
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    call._finish(event.result, None)
            elif isinstance(event, ErrorReceived):
                self._fees.unanswered(event.request_id)
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    call._finish(None, event.error)
            elif isinstance(event, RequestTimedOut):
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    self._fees.unanswered(call.request_id)
                    call._finish(None, E.RpcTimeout(f"no answer to call {event.request_id}"))
            elif isinstance(event, NotificationReceived):
                if self.on_notification is not None:
                    # run by _run_notes once the lock is let go of: a handler that calls
                    # this client would wait for the lock its own thread holds
                    self._notes.append((event.method, event.params))
            elif isinstance(event, ProtocolViolation):
                if len(self.violations) < 1000:
                    self.violations.append(event)
            elif isinstance(event, RequestReceived):
                # this client serves nothing: say so, keep the stream usable -- while the
                # peer takes our answers (it may send requests and never read)
                if len(self._output) < _MAX_QUEUED_OUT:
                    self._refuse(event)
                else:
                    self._proto.drop_request(event.request_id)
        self._wake_followers()

    def _run_notes(self, limit: float | None = None) -> None:
        """Run ``on_notification`` for the notifications read (``_lock`` not held), in
        the order they came: one thread at a time runs them, so one that finds another
        running them (or a handler of its own thread calling this client) leaves its
        own to it. Once ``limit`` (``time.monotonic()``: the deadline the thread reads
        for) has passed, it leaves the rest to the next reader: a peer that sends
        notifications faster than the handler takes them must not hold a call past
        its deadline. Once the client is closed (or its stream failed) it runs no
        more: the thread's call failed, and nobody reads for the rest."""
        notes, note_lock = self._notes, self._note_lock
        while notes:
            if not note_lock.acquire(False):
                return
            try:
                while notes:
                    if self._closed is not None:
                        # the thread's call has failed: a slow handler and a read's
                        # worth of notifications would hold it (for minutes), and a
                        # handler that closed the client would go on being called
                        return
                    method, params = notes.popleft()
                    handler = self.on_notification
                    if handler is None:
                        continue
                    try:
                        handler(method, params)
                    except Exception:
                        logger.exception("notification handler failed")
                    if limit is not None and time.monotonic() >= limit:
                        return
            finally:
                note_lock.release()

    def _wake_followers(self) -> None:
        """Wake the threads waiting for the reader (lock held), if there are any."""
        if self._followers:
            self._cond.notify_all()

    def _expire(self, call: RpcCall, deadline: float | None) -> None:
        """A wait ran out (lock held): the protocol's timers due are handled (calls whose
        own deadline passed time out), and ``call`` times out when ``deadline`` (its
        ``result(timeout)``) has passed."""
        now = time.monotonic()
        timer = self._proto.get_timer()
        if timer is not None and timer <= now:
            self._proto.handle_timer(now)
            self._dispatch(self._proto.events())
        if not call.done and deadline is not None and now >= deadline:
            self._proto.cancel(call.request_id)
            self._calls.pop(call.request_id, None)
            self._fees.unanswered(call.request_id)
            call._finish(None, E.RpcTimeout(f"no answer to call {call.request_id}"))
