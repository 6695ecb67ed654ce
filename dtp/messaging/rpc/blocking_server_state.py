"""What one stream a blocking RPC server serves knows (:class:`ServedStreamState`: its
protocol, lock, sending role, contexts, queued jobs, fees and counters, set up once); the
stream's replies, dispatch and read loops are built on it."""

from __future__ import annotations

import socket as _socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from dtp.messaging.method_rules import MethodRules
from dtp.messaging.protocol import RequestReceived, RpcProtocol
from dtp.messaging.rpc.engine import ServerCallFees
from dtp.messaging.rpc.fees import PaymentsCache, ResponseFeePolicy, stream_payments
from dtp.messaging.rpc.server_base import CallContext, Handler
from dtp.messaging.rpc.streams import BlockingStream
from dtp.socket import DTPSocket


class StreamServer(Protocol):
    """What a served stream uses of its :class:`~dtp.messaging.rpc.RpcServer`: the
    registry and bounds every server keeps (``server_base.ServerBase``), its worker pool,
    its closing and its count of requests served."""

    methods: dict[str, tuple[Handler, bool]]
    notifications: dict[str, tuple[Handler, bool]]
    rules: MethodRules | None
    max_message_size: int
    max_pending: int
    response_fees: ResponseFeePolicy | None
    _payments: PaymentsCache
    _pool: ThreadPoolExecutor | None
    _closed: threading.Event
    _stats_lock: threading.Lock
    _served: int

    @property
    def priced(self) -> bool: ...

    def notification_allowed(self, method: str, client: str | None) -> bool: ...

    def request_cost(
        self, method: str, params: Any, client: str | None
    ) -> tuple[int | None, ...]: ...


class _Job:
    """A request handed to the worker pool (RpcServer.run_in_pool), while it waits in
    the pool's queue. A request that ends there (cancelled, or its deadline passed)
    lets go of its event -- params and all -- at once, and its job counts against
    ``max_pending`` (RpcProtocol.held_incoming) until a worker takes it off the queue:
    its slot was free again at once, so a client sending requests and cancelling them
    filled the queue without bound while the workers were busy (nothing answered, so
    nothing held up the reading either)."""

    __slots__ = ("ctx", "event", "fn", "wants_ctx")

    def __init__(
        self, fn: Handler, wants_ctx: bool, event: RequestReceived, ctx: CallContext | None
    ) -> None:
        self.fn = fn
        self.wants_ctx = wants_ctx
        self.event: RequestReceived | None = event
        self.ctx = ctx


class ServedStreamState:
    """The state of one stream being served, set up once for every part of the
    blocking server's stream (``blocking_server._ServerStream``)."""

    def __init__(
        self,
        server: StreamServer,
        stream: BlockingStream,
        peer: str | None,
        *,
        on_stream: Callable[[Any], None] | None = None,
    ) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        #: takes the streams the client opens (the connection's first stream only)
        self.on_stream = on_stream
        self.proto = RpcProtocol(
            max_message_size=server.max_message_size, max_incoming=server.max_pending
        )
        # (kept: looked up per request, in dropped(), without a call for it)
        self.unanswered = self.proto.unanswered
        self.lock = threading.Lock()
        #: (``lock``) a thread is sending what the protocol queued: the others leave it
        #: what they queue (it looks again before it stops)
        self.sending = False
        #: the stream's send takes MSG_DONTWAIT (a DTPSocket, a socket): answers from
        #: the pool never wait for the client
        self.dontwait = isinstance(stream, _socket.socket | DTPSocket)
        self.contexts: dict[int, CallContext] = {}
        #: (``lock``) request id -> its job while it waits in the pool's queue
        self.queued: dict[int, _Job] = {}
        self.connection_id: str | None = getattr(stream, "peer_connection_id", None)
        #: the stream's fees (engine.ServerCallFees), its connection's check resolved now
        self.fees = ServerCallFees(*stream_payments(server._payments, stream), server.response_fees)
        #: set when a pool worker or the writer thread is done with an answer (for
        #: finish_answers); ``failed``: sending failed, the stream is done for
        self.progress = threading.Event()
        self.failed = False
        #: requests answered by the stream's own thread, and frames that broke the
        #: format (RpcServer.served / .violations: this thread alone writes them)
        self.served = 0
        self.violations = 0
