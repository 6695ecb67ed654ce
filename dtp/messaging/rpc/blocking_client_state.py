"""What one blocking RPC client knows (:class:`ClientState`, every attribute its parts use,
declared once), its calls (:class:`RpcCall`) and the deadline helper its writes and calls
share; the client
(:class:`~dtp.messaging.rpc.blocking_client.RpcClient`) is made of the parts built on it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from dtp.messaging.protocol import ProtocolViolation, _check_wait
from dtp.messaging.rpc.client_base import ClientBase
from dtp.messaging.rpc.streams import BlockingStream


def _deadline(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` value ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


class CallOwner(Protocol):
    """What a call asks of its client (the reads' wait, the client's cancel)."""

    def _wait(self, call: RpcCall, deadline: float | None) -> None: ...

    def _cancel(self, call: RpcCall) -> bool: ...


class RpcCall:
    """A call in flight on an :class:`~dtp.messaging.rpc.RpcClient` (a small future)."""

    __slots__ = ("_client", "_error", "_event", "_result", "done", "escrow_id", "request_id")

    def __init__(self, client: CallOwner, request_id: int) -> None:
        self._client = client
        self.request_id = request_id
        self.done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._event: threading.Event | None = None
        #: The ResponseEscrow this call prepaid, if any (the client's fee engine
        #: holds what becomes of it: ClientFees).
        self.escrow_id: str | None = None

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error, self.done = result, error, True
        if self._event is not None:
            self._event.set()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the answer: the result, or the call's typed error. When ``timeout``
        (seconds) passes first the call itself ends in :class:`RpcTimeout` (the peer is
        told, as at the call's own deadline): a later ``result()`` raises it too."""
        if timeout is not None:
            _check_wait(timeout)
        self._client._wait(self, None if timeout is None else time.monotonic() + timeout)
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> bool:
        """Cancel the call (the peer is told); False if it already finished. A thread
        waiting in :meth:`result` sees it at once, also one reading the stream for
        everybody when the stream is a DTPSocket (its read is interrupted); on another
        stream that one sees it at the end of its read, within about a second."""
        return self._client._cancel(self)


class ClientState(ClientBase):
    """The state of a blocking RPC client, declared once for every part of
    :class:`~dtp.messaging.rpc.blocking_client.RpcClient` (which sets it up)."""

    _stream: BlockingStream
    timeout: float | None
    """Default seconds per call (None: wait forever)."""
    on_notification: Callable[[str, Any], None] | None
    _close_stream: bool
    _output: Any
    """The protocol's queue of output (whether output waits is asked without a call)."""
    _calls: dict[int, RpcCall]
    _lock: threading.Lock
    """Protocol state and ``_calls``."""
    _cond: threading.Condition
    _wlock: threading.Lock
    """The order of bytes on the stream."""
    _reading: bool
    """A thread is reading for everybody."""
    _followers: int
    """Threads waiting in ``_cond`` for the reader."""
    _current_timeout: float | object | None
    """The timeout last set on the stream (``DEFAULT``: unknown)."""
    _read_size: int
    _backlog: bytes
    _dontwait: bool
    _send_recv: Callable[..., bytes | None] | None
    _notes: deque[tuple[str, Any]]
    _note_lock: threading.Lock
    violations: list[ProtocolViolation]
    """Frames from the peer that broke the format (skipped)."""
