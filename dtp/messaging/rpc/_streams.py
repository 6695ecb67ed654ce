"""The streams RPC runs on: what the blocking client and server need of one
(:class:`BlockingStream`), the checks of what they are given, and sending; shared by
the blocking and asyncio clients and servers (the read sizes are the protocol's,
``dtp.messaging._protocol.QUICK_RECV_SIZE`` and ``RECV_SIZE``)."""

from __future__ import annotations

import functools
import select
import socket as _socket
import threading
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Protocol

from dtp.messaging import errors as E

DEFAULT: Any = object()


class BlockingStream(Protocol):
    """What the blocking client and server need from a stream (a DTPSocket has it)."""

    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, bufsize: int, /) -> bytes: ...

    def settimeout(self, timeout: float | None, /) -> None: ...


def check_blocking_stream(stream: object) -> None:
    """A blocking client's or server's stream has what it uses (BlockingStream): an
    object without them (an asyncio writer, say) failed at the first call, in the
    reader, with an AttributeError about one of them."""
    missing = [name for name in ("sendall", "recv", "settimeout") if not hasattr(stream, name)]
    if missing:
        hint = (
            " (an asyncio stream: use AsyncRpcClient / AsyncRpcServer)"
            if hasattr(stream, "drain")
            else ""
        )
        raise TypeError(
            f"a blocking RPC stream needs sendall, recv and settimeout (a DTPSocket or a "
            f"socket); {type(stream).__name__!r} has no {', '.join(missing)}{hint}"
        )


def check_async_streams(reader: object, writer: object) -> None:
    """The asyncio client's (reader, writer) have what it uses: a DTPSocket given as
    both failed in the read loop's task, and again at each call."""
    if not callable(getattr(reader, "read", None)):
        raise TypeError(
            "AsyncRpcClient's reader must be an asyncio stream reader (dtp.aio "
            f"open_connection's), not {type(reader).__name__!r}; a blocking DTPSocket "
            "takes RpcClient"
        )
    if not callable(getattr(writer, "write", None)) or not callable(getattr(writer, "drain", None)):
        raise TypeError(
            "AsyncRpcClient's writer must be an asyncio stream writer (dtp.aio "
            f"open_connection's), not {type(writer).__name__!r}; a blocking DTPSocket "
            "takes RpcClient"
        )


def send_answer(stream: BlockingStream, data: bytes, closed: threading.Event) -> None:
    """``stream.sendall(data)`` whatever read timeout the stream has. A connection's
    first stream reads with short timeouts, to look for the streams the client opens
    in between (and the general loop waits for deadlines the same way), and the
    timeout is the stream's, shared by its reads and writes: an answer that a client
    is slow to take must wait for its flow-control window instead, or the stream would
    end with the answer half sent. It waits until the server closes."""
    send = getattr(stream, "send", None)
    if send is None:
        stream.sendall(data)
        return
    view = memoryview(data)
    while view:
        try:
            n: int = send(view)  # a timeout means nothing of this call was taken
        except TimeoutError:
            if closed.is_set():
                raise
            continue
        except BlockingIOError:
            # the first stream's thread set timeout 0 for a moment (to look for new
            # streams without waiting): it sets its own again at once
            if closed.is_set():
                raise
            time.sleep(0.001)
            continue
        view = view[n:]


def can_send(sock: _socket.socket) -> bool:
    """Whether ``sock`` (a plain socket) takes data now. A socket with a timeout waits
    for room up to that timeout before it tries, even with MSG_DONTWAIT, so it is asked
    first (a DTPSocket does what the flag says). poll where there is one: select
    refuses a descriptor past FD_SETSIZE (1024), which a busy server has."""
    if not sock.gettimeout() or sock.fileno() < 0:
        # no timeout: the flag is obeyed (no poll per send); closed: the send says so
        # (OSError), as it did before
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(0))
    return bool(select.select((), (sock,), (), 0)[1])


def send_nowait(stream: Any, data: bytes) -> bytes:
    """Send what ``stream`` takes of ``data`` now; returns the rest. ``stream``'s send
    takes MSG_DONTWAIT (a DTPSocket, a socket): the blocking client's flush and the
    blocking server's answers never wait for a peer that does not read. A plain
    socket with a timeout (a read loop's) would wait that long for room before it
    tried, so it is asked first (:func:`can_send`)."""
    send = stream.send
    plain = stream if isinstance(stream, _socket.socket) else None
    view = memoryview(data)
    while view:
        if plain is not None and not can_send(plain):
            return bytes(view)
        try:
            n: int = send(view, _socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            return bytes(view)
        view = view[n:]
    return b""


#: A client takes a large read in pieces of this many bytes, looking at the clock in
#: between: a peer that sends frames costly to take (junk, a flood of tiny ones: up to
#: about 1 us a byte) would otherwise keep a call's thread past its deadline by a whole
#: read's worth of work. What is left when the deadline passes waits for the next reader.
TAKE_PIECE = 16 * 1024
#: The asyncio client and server let the loop run after this long (seconds) of taking
#: one read (notification handlers, a read's pieces): AsyncRpcClient._receive_in_pieces.
TAKE_TIME = 0.01
#: Bytes of answers a server queues for a client that does not take them before it
#: reads no more of its requests (_ServerStream.backed_up).
UNSENT_CAP = 4 << 20


class _LoopTurn:
    """``await LOOP_TURN``: the task lets the loop run its other work once, as
    ``asyncio.sleep(0)`` does (a bare yield), with no Python call where that makes four
    (the asyncio server's inline answer takes a turn a request)."""

    __slots__ = ()

    # (any iterator will do: the task takes the None it yields as a bare yield. A
    # partial called with no self makes a new iterator with no Python frame; wrapped in
    # staticmethod, as a bare partial binds self from Python 3.14 and warns on 3.13)
    if TYPE_CHECKING:

        def __await__(self) -> Generator[None, None, None]: ...

    else:
        __await__ = staticmethod(functools.partial(iter, (None,)))


LOOP_TURN = _LoopTurn()


def send_failed(exc: BaseException) -> E.RpcConnectionLost:
    """The error of every call once a write failed with ``exc``."""
    if isinstance(exc, TimeoutError):
        return E.RpcConnectionLost(
            "sending timed out: the peer took no data before the call's deadline, and the "
            "stream may hold part of a message"
        )
    return E.RpcConnectionLost(f"sending failed: {exc}")
