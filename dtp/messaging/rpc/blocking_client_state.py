"""What one blocking RPC client knows (:class:`ClientState`, every attribute its parts use,
declared once) and the deadline helper its writes and calls share; the client
(:class:`~dtp.messaging.rpc.blocking_client.RpcClient`) is made of the parts built on it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.messaging.protocol import ProtocolViolation
from dtp.messaging.rpc.client_base import ClientBase
from dtp.messaging.rpc.streams import BlockingStream

if TYPE_CHECKING:
    from dtp.messaging.rpc.blocking_client import RpcCall


def _deadline(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` value ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


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
