"""What one stream a blocking RPC server serves knows (:class:`ServedStreamState`: its
protocol, lock, sending role, contexts, queued jobs, fees and counters, set up once); the
stream's replies, dispatch and read loops are built on it."""

from __future__ import annotations

import socket as _socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.messaging.protocol import RpcProtocol
from dtp.messaging.rpc.engine import ServerCallFees
from dtp.messaging.rpc.fees import stream_payments
from dtp.messaging.rpc.server_base import CallContext
from dtp.messaging.rpc.streams import BlockingStream
from dtp.socket import DTPSocket

if TYPE_CHECKING:
    from dtp.messaging.rpc.blocking_server import RpcServer
    from dtp.messaging.rpc.blocking_server_dispatch import _Job


class ServedStreamState:
    """The state of one stream being served, set up once for every part of the
    blocking server's stream (``blocking_server._ServerStream``)."""

    def __init__(
        self,
        server: RpcServer,
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
