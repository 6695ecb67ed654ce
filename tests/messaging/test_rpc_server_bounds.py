"""The RPC servers against clients that cancel, reuse ids and stop reading
(dtp/messaging/rpc/_blocking_server.py, dtp/messaging/rpc/_asyncio_server.py):

- a pool server's queue grew without bound for a client sending requests it cancels
  at once (or gives deadlines that pass at once): each one's slot of ``max_pending``
  was free again at once, while its work item stayed queued, params and all;
- a pool server whose writer thread failed went on reading requests and queuing their
  answers for good;
- a pool server answered a request whose id the client reused (after a CANCEL) with
  the old handler's result, and lost the new one's context; the asyncio server lost
  the new one's task (it could no longer be cancelled);
- on a plain socket, a pool worker's "non-blocking" send waited the socket's timeout
  for a client that does not read;
- a broken frame naming a request in progress dropped that request's answer.

Real sockets on 127.0.0.1, with raw frames from the client side where the RpcClient
would not send them (it never reuses an id in flight, nor floods)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

import dtp.socket
from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging._protocol import ProtocolViolation, RequestReceived, RpcProtocol
from dtp.messaging.rpc import AsyncRpcServer, CallContext, RpcClient, RpcServer
from tests.messaging.rpc_world import Served
from tests.support.polling import wait_for


def frame(message: Any) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def _tcp_pair(*, small_buffers: bool = False) -> tuple[socket.socket, socket.socket]:
    """(the server's end, the client's end) of a TCP connection on 127.0.0.1; with
    ``small_buffers`` the kernel holds little of what the server sends."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        if small_buffers:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    if small_buffers:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    return server, client


def _serve(rpc: RpcServer, sock: socket.socket) -> threading.Thread:
    thread = threading.Thread(target=rpc.serve_stream, args=(sock,), daemon=True)
    thread.start()
    return thread


def _read_until(
    sock: socket.socket, done: Callable[[list[Any]], bool], timeout: float = 10.0
) -> list[Any]:
    """The messages read from ``sock`` until ``done(messages)`` (or ``timeout``)."""
    got: list[Any] = []
    buf = b""
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            n = int.from_bytes(buf[:4], "big")
            got.append(msgpack.unpackb(buf[4 : 4 + n], raw=False))
            buf = buf[4 + n :]
    return got


def _answered(request_id: int) -> Callable[[list[Any]], bool]:
    return lambda got: any(m[0] in (1, 2) and m[1] == request_id for m in got)


# -- 1. requests that end while queued for the pool -----------------------------------------


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_requests_ended_in_the_pools_queue_keep_counting_against_max_pending(
    ending: str,
) -> None:
    """The only worker is busy; the client sends 400 requests of 10 kB, each cancelled
    at once (or with a 1 ms deadline). The ones ended in the pool's queue count against
    ``max_pending`` until a worker takes them off it (a client cannot grow the server's
    memory without bound), the rest are refused ``SERVER_BUSY``, and once the worker is
    free their slots are free again."""
    max_pending = 8
    rpc = RpcServer(workers=1, max_pending=max_pending)
    started, gate, marked = threading.Event(), threading.Event(), threading.Event()

    def block(p: Any) -> bool:
        started.set()
        return gate.wait(10)

    rpc.register("block", block)
    rpc.register("work", lambda p: len(p) if p else 0)
    rpc.register("mark", lambda p: marked.set(), notification=True)
    srv, cli = _tcp_pair()
    try:
        thread = _serve(rpc, srv)
        cli.sendall(frame([0, 1, "block", None, 0, None]))
        assert started.wait(10)
        params = b"x" * 10_000
        n = 400
        for first in range(2, 2 + n, max_pending):
            ids = range(first, first + max_pending)
            if ending == "cancel":
                batch = [frame([0, i, "work", params, 0, None]) + frame([4, i]) for i in ids]
            else:
                batch = [frame([0, i, "work", params, 1, None]) for i in ids]
            cli.sendall(b"".join(batch))
            # (a pause for the deadlines to pass: requests read together before they
            # do would be refused SERVER_BUSY, whatever the slots)
            time.sleep(0.003)
        cli.sendall(frame([3, "mark", None, None]))  # read once all the above was
        assert marked.wait(10)
        assert rpc._pool is not None
        queued = rpc._pool._work_queue.qsize()
        # (max_pending, and what one read holds beyond it at most)
        assert queued <= 60, f"{queued} requests queued for the pool"
        (stream,) = rpc._live
        gate.set()
        # the worker takes what is queued off, and every slot is free again
        assert wait_for(lambda: stream.proto.held_incoming == 0)
        assert wait_for(lambda: stream.proto.pending_incoming == 0)
        cli.sendall(frame([0, 9000, "work", b"abc", 0, None]))
        got = _read_until(cli, _answered(9000))
        assert [1, 9000, 3, None] in got
        # (the flood's requests were refused, never answered otherwise)
        assert all(m[0] == 2 and m[2] == E.SERVER_BUSY for m in got if 2 <= m[1] < 2 + n)
    finally:
        gate.set()
        cli.close()
        thread.join(5)
        srv.close()
        rpc.close()


# -- 2. the writer thread failed ------------------------------------------------------------


def test_a_stream_whose_answers_cannot_be_sent_stops_taking_requests() -> None:
    """An answer too large to go at once is left to the stream's writer thread; the
    client stops reading (its sends fail at the server) and goes on sending requests.
    The writer's failure ends the stream: the read loop does not go on answering,
    queuing megabytes without bound."""
    rpc = RpcServer(workers=2, max_message_size=8 << 20)
    rpc.register("big", lambda p: b"x" * (6 << 20))
    rpc.register("small", lambda p: b"y" * (100 << 10))
    s = Served(rpc)
    try:
        s.connect()
        sock = s.socks[0]
        assert wait_for(lambda: len(rpc._live) == 1)
        (stream,) = rpc._live
        sock.sendall(frame([0, 1, "big", None, 0, None]))
        # its answer waits for our window: the stream's writer thread has it (when
        # the worker's own send still had it, our end returning its credit at the
        # shutdown could let it all through: then the next answer's send fails)
        assert wait_for(lambda: any(t.name == "dtp-rpc-writer" for t in threading.enumerate()))
        sock.shutdown(dtp.socket.SHUT_RD)  # the server's sends fail from now on
        with contextlib.suppress(DTPError, OSError):  # (the server may have closed)
            for i in range(2, 202):
                sock.sendall(frame([0, i, "small", None, 0, None]))
        assert wait_for(lambda: stream not in rpc._live, timeout=5)
        assert stream.failed and not stream.sending
        assert sum(map(len, stream.proto._out)) <= 4 << 20
    finally:
        s.close()


# -- 3, 4. a reused request id ----------------------------------------------------------------


def test_a_pool_server_answers_a_reused_id_with_its_own_request() -> None:
    """Request 5 runs; the client cancels it and sends a new request 5 (an id no longer
    in flight may be used again). Each gets its own handler's answer, and the first's
    end leaves the second's context (a CANCEL of the second reaches its handler)."""
    rpc = RpcServer(workers=2)
    a_started, b_started, gate = threading.Event(), threading.Event(), threading.Event()
    outcome: list[bool] = []

    def slow(p: Any) -> Any:
        a_started.set()
        gate.wait(10)  # (does not watch ctx.cancelled)
        return f"slow result for {p}"

    def watch(p: Any, ctx: CallContext) -> Any:
        b_started.set()
        outcome.append(ctx.cancelled.wait(5))
        return f"watch result for {p}"

    rpc.register("slow", slow)
    rpc.register("watch", watch, context=True)
    rpc.register("ping", lambda p: "pong")
    srv, cli = _tcp_pair()
    try:
        thread = _serve(rpc, srv)
        cli.sendall(frame([0, 5, "slow", "A", 0, None]))
        assert a_started.wait(10)
        cli.sendall(frame([4, 5]) + frame([0, 5, "watch", "B", 0, None]))
        assert b_started.wait(10)
        gate.set()  # the cancelled handler returns while the new one runs
        assert wait_for(lambda: rpc.served >= 1)
        cli.sendall(frame([4, 5]))  # and the new one is cancelled in turn
        assert wait_for(lambda: bool(outcome), timeout=8)
        assert outcome == [True]
        cli.sendall(frame([0, 6, "ping", None, 0, None]))
        got = _read_until(cli, _answered(6))
        assert got[-1] == [1, 6, "pong", None]
        assert [m for m in got if m[1] == 5] == []  # neither handler's answer went out
    finally:
        gate.set()
        cli.close()
        thread.join(5)
        srv.close()
        rpc.close()


def test_the_protocol_answers_a_request_only_for_its_own_admission() -> None:
    proto = RpcProtocol()
    proto.receive_data(frame([0, 5, "m", "A", 0, None]))
    (first,) = proto.events()
    proto.receive_data(frame([4, 5]) + frame([0, 5, "m", "B", 0, None]))
    _cancelled, second = proto.events()
    assert isinstance(first, RequestReceived) and isinstance(second, RequestReceived)
    assert proto.send_response(5, "A's", request=first) is None
    assert not proto.send_error(5, E.INTERNAL_ERROR, "A failed", request=first)
    assert not proto.drop_request(5, request=first)
    assert proto.send_response(5, "B's", request=second) is not None
    assert msgpack.unpackb(proto.data_to_send()[4:]) == [1, 5, "B's", None]


def test_the_asyncio_server_can_cancel_a_request_reusing_a_cancelled_ones_id() -> None:
    """The cancelled task's ``finally`` removed the entry of the new task with its id:
    a CANCEL of the new request, and the end of the stream, no longer reached it (it
    ran to its end, side effects and all)."""
    log: list[str] = []

    async def main() -> None:
        rpc = AsyncRpcServer()

        async def work(p: Any) -> Any:
            log.append(f"start {p}")
            try:
                await asyncio.sleep(8)
            except asyncio.CancelledError:
                log.append(f"cancelled {p}")
                raise
            log.append(f"completed {p}")
            return p

        rpc.register("work", work)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await rpc.serve_stream(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def until(what: str) -> None:
            for _ in range(500):
                if what in log:
                    return
                await asyncio.sleep(0.01)

        try:
            writer.write(frame([0, 5, "work", "A", 0, None]))
            await until("start A")
            writer.write(frame([4, 5]) + frame([0, 5, "work", "B", 0, None]))
            await until("start B")
            await until("cancelled A")
            writer.write(frame([4, 5]))  # cancel B
            await until("cancelled B")
            assert log == ["start A", "cancelled A", "start B", "cancelled B"]
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


# -- 5. a plain socket's client that does not read -----------------------------------------------


def test_a_client_not_reading_on_a_plain_socket_does_not_hold_a_pool_worker() -> None:
    """A's answer is larger than the sockets hold, and A never reads; the stream's
    timeout is A's deadline (the read loop keeps it). The worker's send never waits
    that timeout for room (as MSG_DONTWAIT on a socket with a timeout would), so the
    only worker is free for B's call on another stream."""
    rpc = RpcServer(workers=1)
    a_srv, a_cli = _tcp_pair(small_buffers=True)

    def big(p: Any) -> bytes:
        # (once the read loop has set the stream's timeout to the request's deadline)
        wait_for(lambda: a_srv.gettimeout() is not None, timeout=5)
        return b"x" * (900 * 1024)

    rpc.register("big", big)
    rpc.register("ping", lambda p: "pong")
    b_srv, b_cli = _tcp_pair()
    threads = [_serve(rpc, a_srv), _serve(rpc, b_srv)]
    try:
        a_cli.sendall(frame([0, 1, "big", None, 8000, None]))  # and never read
        client_b = RpcClient(b_cli, timeout=20)
        assert wait_for(lambda: rpc.served >= 1)  # (big returned: its answer is sent)
        started = time.monotonic()
        assert client_b.call("ping") == "pong"
        assert time.monotonic() - started < 4.0
    finally:
        a_cli.close()
        b_cli.close()
        for thread in threads:
            thread.join(5)
        a_srv.close()
        b_srv.close()
        rpc.close()


# -- 6. a broken frame naming a request in progress --------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        frame([0, 7, "m", b"z" * 2000, 0, None]),  # over the cap
        frame([0, 7, "m", None, 0]),  # five elements
    ],
    ids=["oversized", "wrong-length"],
)
def test_a_broken_request_naming_one_in_progress_leaves_it_its_answer(bad: bytes) -> None:
    """A broken frame naming the id of a request in progress is complained about
    without an id (as a frame msgpack cannot decode is), and the first request keeps
    its answer."""
    proto = RpcProtocol(max_message_size=1000)
    proto.receive_data(frame([0, 7, "m", None, 0, None]))
    proto.events()
    proto.receive_data(bad)
    (violation,) = proto.events()
    assert isinstance(violation, ProtocolViolation)
    complaint = msgpack.unpackb(proto.data_to_send()[4:])
    assert complaint[0] == 2 and complaint[1] is None
    assert proto.pending_incoming == 1
    assert proto.send_response(7, "the real answer") is not None
    assert msgpack.unpackb(proto.data_to_send()[4:]) == [1, 7, "the real answer", None]


def test_the_asyncio_servers_no_method_error_answers_only_its_own_request() -> None:
    """One read: a request of an unknown method, its CANCEL, and a request reusing its
    id. The "no method" error was sent by id alone, when the id named the later request
    already: that request got the error, and its handler's result was dropped."""
    ran: list[str] = []

    async def main() -> list[Any]:
        rpc = AsyncRpcServer()

        async def work(params: str) -> str:
            ran.append(params)
            return f"result {params}"

        rpc.register("work", work)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await rpc.serve_stream(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            frame([0, 5, "nosuch", None, 0, None])
            + frame([4, 5])
            + frame([0, 5, "work", "B", 0, None])
        )
        answers: list[Any] = []
        buffer = b""
        deadline = time.monotonic() + 10
        while not answers and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                buffer += await asyncio.wait_for(reader.read(65536), 0.2)
            while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                size = int.from_bytes(buffer[:4], "big")
                answers.append(msgpack.unpackb(buffer[4 : 4 + size], raw=False))
                buffer = buffer[4 + size :]
        writer.close()
        server.close()
        return answers

    answers = asyncio.run(main())
    assert ran == ["B"]
    assert answers == [[1, 5, "result B", None]]
