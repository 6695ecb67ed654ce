"""RPC over DTP streams: blocking :class:`RpcClient` / :class:`RpcServer` and asyncio
:class:`AsyncRpcClient` / :class:`AsyncRpcServer`, on the sans-I/O
:class:`~dtp.messaging._protocol.RpcProtocol` (wire format: docs/messaging.md §2).

Every API takes an already-open stream — a :class:`dtp.socket.DTPSocket` (or anything with
``sendall``/``recv``/``settimeout``), or an asyncio ``(reader, writer)`` pair from
:mod:`dtp.aio` — so how the connection was made (address + server key today, a host ID
later) is the caller's business::

    sock = dtp.socket.create_connection(addr, server_key=key)
    client = RpcClient(sock)
    client.call("add", [1, 2], timeout=5.0)   # -> 3

The blocking client does its socket work in the calling thread ("leader/follower"): one
waiting caller reads for everyone and hands out the responses it finds, so a sequential
call costs no thread hand-off, and many threads may have calls in flight on one stream.
A call on a quiet stream (no other call in flight, no fees) is one send and usually one
read: the read is taken as its answer when it is exactly that, with no call object,
timer or event; anything else makes it an ordinary call. Likewise a server answering
inline (``workers=0``, no fees) answers a read that is one request for a plain handler
straight away. Both fall back to the general path for everything else.

Money (docs/escrow.md): a client with a :class:`~dtp.payments.receipts.Meter` attaches a signed
cumulative receipt to every request, and a server with :class:`RequestPayments` refuses
requests that no valid receipt covers. With :class:`ResponsePrepay` the client prepays the
response fee into a ledger ``ResponseEscrow`` per request; the server checks it
(:class:`ResponseFeePolicy`), the client acknowledges each response with a signature, and
the server claims with it — or the client takes the fee back after the deadline.
The package re-exports the public API of its modules (their parts: docs/architecture.md,
"apps: rpc").
their public API.
"""

from dtp.messaging._protocol import QUICK_RECV_SIZE, RECV_SIZE
from dtp.messaging.rpc._asyncio_client import AsyncRpcClient
from dtp.messaging.rpc._asyncio_server import AsyncRpcServer
from dtp.messaging.rpc._blocking_client import RpcCall, RpcClient
from dtp.messaging.rpc._blocking_server import ACCEPT_POLL_MAX, ACCEPT_POLL_MIN, RpcServer
from dtp.messaging.rpc._fees import (
    RequestPayments,
    ResponseFeePolicy,
    ResponsePrepay,
    ledger_payments,
    response_hash,
)
from dtp.messaging.rpc._server_base import CallContext, Handler
from dtp.messaging.rpc._streams import BlockingStream

__all__ = [
    "ACCEPT_POLL_MAX",
    "ACCEPT_POLL_MIN",
    "QUICK_RECV_SIZE",
    "RECV_SIZE",
    "AsyncRpcClient",
    "AsyncRpcServer",
    "BlockingStream",
    "CallContext",
    "Handler",
    "RequestPayments",
    "ResponseFeePolicy",
    "ResponsePrepay",
    "RpcCall",
    "RpcClient",
    "RpcServer",
    "ledger_payments",
    "response_hash",
]
