"""RPC: the sans-I/O protocol (whole / byte-at-a-time / random splits, bad input), the
blocking and asyncio clients and servers over real DTP connections on 127.0.0.1
(hundreds in flight, out-of-order answers, deadlines, cancellation, typed errors,
oversized and malformed input), JSON-RPC 2.0 (handler and HTTP proxy), per-request fees
and response escrow on LocalLedger."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import pytest

import dtp.aio
import dtp.errors
import dtp.socket
from dtp.errors import DTPError, InsufficientFunds, InvalidObjectId, ObjectNotFound, PaymentError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.interface import RESPONSE_ESCROW_PAID
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging._framing import FrameDecoder, Oversized, encode_frame
from dtp.messaging._protocol import (
    ErrorReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    RpcProtocol,
)
from dtp.messaging.errors import RpcConnectionLost
from dtp.messaging.jsonrpc import (
    JsonRpcClient,
    JsonRpcHandler,
    JsonRpcHttpProxy,
    serve_jsonrpc,
)
from dtp.messaging.rpc import (
    ACCEPT_POLL_MAX,
    QUICK_RECV_SIZE,
    RECV_SIZE,
    AsyncRpcClient,
    AsyncRpcServer,
    RequestPayments,
    ResponseFeePolicy,
    ResponsePrepay,
    RpcClient,
    RpcServer,
    ledger_payments,
)
from dtp.payments.receipts import Meter, Receipt
from tests.messaging.rpc_world import OFF, PROMPT, ScriptedPeer, Served, make_rpc
from tests.support.polling import wait_for

if TYPE_CHECKING:  # (a type only)
    from tests.messaging.conftest import Endpoint

# -- the sans-I/O core ---------------------------------------------------------------------------


def pair() -> tuple[RpcProtocol, RpcProtocol]:
    return RpcProtocol(max_message_size=4096), RpcProtocol(max_message_size=4096)


def feed(dst: RpcProtocol, data: bytes, how: str, rng: random.Random) -> None:
    if how == "whole":
        dst.receive_data(data)
    elif how == "bytes":
        for i in range(len(data)):
            dst.receive_data(data[i : i + 1])
    else:
        i = 0
        while i < len(data):
            n = rng.randint(1, 17)
            dst.receive_data(data[i : i + n])
            i += n


@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_protocol_roundtrip_any_split(how: str) -> None:
    rng = random.Random(7)
    client, server = pair()
    ids = [client.send_request("m", {"i": i, "b": b"\x00" * i}) for i in range(20)]
    client.send_notification("note", [1, 2])
    feed(server, client.data_to_send(), how, rng)
    events = server.events()
    requests = [e for e in events if isinstance(e, RequestReceived)]
    assert [r.request_id for r in requests] == ids
    assert isinstance(events[-1], NotificationReceived) and events[-1].params == [1, 2]
    for r in reversed(requests):  # answer out of order
        server.send_response(r.request_id, r.params["i"])
    feed(client, server.data_to_send(), how, rng)
    got = {e.request_id: e.result for e in client.events() if isinstance(e, ResponseReceived)}
    assert got == {rid: i for i, rid in enumerate(ids)}
    assert client.in_flight == 0 and server.pending_incoming == 0


def test_protocol_malformed_msgpack_is_reported_and_stream_stays_usable() -> None:
    client, server = pair()
    garbage = b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    server.receive_data(struct.pack(">I", len(garbage)) + garbage)
    (event,) = server.events()
    assert isinstance(event, ProtocolViolation)
    assert isinstance(event.error, E.MalformedMessage) and event.error.wire_code == E.PARSE_ERROR
    client.receive_data(server.data_to_send())
    (report,) = client.events()
    assert isinstance(report, ProtocolViolation) and isinstance(report.reported, E.ParseError)
    assert client.data_to_send() == b""  # an ERROR is never answered with an ERROR
    rid = client.send_request("ok")
    server.receive_data(client.data_to_send())
    (req,) = server.events()
    assert isinstance(req, RequestReceived) and req.request_id == rid


@pytest.mark.parametrize(
    "message",
    [
        [],
        ["x"],
        [0, 1, "m"],
        [0, 0, "m", None, 0, None],
        [0, 1, "", None, 0, None],
        [0, 1, "m", None, -1, None],
        [0, 1, "m", None, 0, [1]],
        [1, 1],
        [2, 1, "code", "msg", None],
        [4, "x"],
        [5, 1, b"short"],
        [99, 1],
        {"a": 1},
    ],
)
def test_protocol_invalid_messages_are_typed(message: Any) -> None:
    _, server = pair()
    server.receive_data(encode_frame(message))
    events = server.events()
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert isinstance(events[0].error, E.MessagingProtocolError)


def test_protocol_bad_request_fields_answer_with_the_request_id() -> None:
    client, server = pair()
    server.receive_data(encode_frame([0, 5, "m", None, "soon", None]))
    assert isinstance(server.events()[0], ProtocolViolation)
    client._outgoing[5] = None  # pretend we sent request 5
    client.receive_data(server.data_to_send())
    (event,) = client.events()
    assert isinstance(event, ErrorReceived) and event.request_id == 5
    assert isinstance(event.error, E.ParseError)


def test_protocol_oversized_request_is_skipped_and_answered() -> None:
    client, server = RpcProtocol(max_message_size=1 << 16), RpcProtocol(max_message_size=1024)
    big = client.send_request("m", b"x" * 5000)
    small = client.send_request("m", b"y")
    data = client.data_to_send()
    for i in range(0, len(data), 100):  # arrives in pieces: never buffered whole
        server.receive_data(data[i : i + 100])
        assert server._decoder.buffered <= 1024 + 8
    events = server.events()
    assert isinstance(events[0], ProtocolViolation) and events[0].request_id == big
    assert isinstance(events[0].error, E.MessageTooLarge)
    assert isinstance(events[1], RequestReceived) and events[1].request_id == small
    client.receive_data(server.data_to_send())
    (err,) = client.events()
    assert isinstance(err, ErrorReceived) and isinstance(err.error, E.RequestTooLarge)


def test_protocol_oversized_request_split_in_its_head_is_still_answered() -> None:
    """The id of an oversized request is read even when its head arrives in pieces."""
    client, server = RpcProtocol(max_message_size=1 << 16), RpcProtocol(max_message_size=1024)
    big = client.send_request("method", b"x" * 5000)
    data = client.data_to_send()
    for i in range(0, 64):  # header and head a byte at a time
        server.receive_data(data[i : i + 1])
    server.receive_data(data[64:])
    (violation,) = server.events()
    assert isinstance(violation, ProtocolViolation) and violation.request_id == big
    client.receive_data(server.data_to_send())
    (err,) = client.events()
    assert isinstance(err, ErrorReceived) and err.request_id == big
    assert isinstance(err.error, E.RequestTooLarge)


def test_protocol_send_caps_and_busy() -> None:
    client = RpcProtocol(max_message_size=100)
    with pytest.raises(E.PayloadTooLarge):
        client.send_request("m", b"x" * 200)
    assert client.in_flight == 0
    server = RpcProtocol(max_incoming=2)
    sender = RpcProtocol()
    ids = [sender.send_request("m") for _ in range(3)]
    server.receive_data(sender.data_to_send())
    assert len(server.events()) == 2 and server.busy_rejections == 1
    sender.receive_data(server.data_to_send())
    (busy,) = sender.events()
    assert isinstance(busy, ErrorReceived) and busy.request_id == ids[2]
    assert isinstance(busy.error, E.ServerBusy)


def test_protocol_deadlines_and_cancel() -> None:
    client, server = pair()
    rid = client.send_request("slow", now=100.0, timeout=2.0)
    server.receive_data(client.data_to_send(), now=50.0)
    (req,) = server.events()
    assert isinstance(req, RequestReceived) and req.deadline == pytest.approx(52.0)
    assert client.get_timer() == pytest.approx(102.0)
    client.handle_timer(101.0)
    assert client.events() == []
    client.handle_timer(102.0)
    (timed_out,) = client.events()
    assert isinstance(timed_out, RequestTimedOut) and timed_out.request_id == rid
    server.receive_data(client.data_to_send(), now=51.0)  # the CANCEL
    (cancelled,) = server.events()
    assert isinstance(cancelled, RequestCancelled) and cancelled.reason == "cancelled"
    assert server.send_response(rid, "late") is None  # nothing sent for a cancelled request
    assert server.data_to_send() == b""
    # the peer's deadline also expires on its own
    rid2 = client.send_request("slow", timeout=1.0)
    server.receive_data(client.data_to_send(), now=60.0)
    server.events()
    server.handle_timer(61.0)
    (expired,) = server.events()
    assert expired == RequestCancelled(rid2, "deadline")
    # a late response to a request we gave up on is dropped and counted
    client.cancel(rid2)
    client.receive_data(encode_frame([1, rid2, "late", None]))
    assert client.events() == [] and client.late_responses == 1


def test_protocol_output_view_put_back_clear_and_forget() -> None:
    """The members the drivers use instead of the protocol's insides: ``output`` and
    ``unanswered`` are live views (kept once by a driver), ``put_back`` puts a partial
    send's rest first, ``clear_output`` drops the queue, ``forget_request`` ends our
    request with nothing sent (``cancel`` sends a CANCEL)."""
    client, server = pair()
    output = client.output
    assert not output and client.queued_bytes == 0
    first = client.send_request("a")
    second = client.send_request("b")
    assert client.output is output and len(output) == 2
    data = client.data_to_send()
    assert client.queued_bytes == 0 and not output
    # the stream took 5 bytes: the rest goes first, ahead of what was queued since
    client.send_notification("n")
    client.put_back(data[5:])
    assert client.queued_bytes == len(data) - 5 + len(output[1])
    server.receive_data(data[:5] + client.data_to_send())
    events = server.events()
    assert [type(e) for e in events] == [RequestReceived, RequestReceived, NotificationReceived]
    unanswered = server.unanswered
    assert set(unanswered) == {first, second} and unanswered[first] is events[0]
    server.send_response(first, 1)
    assert set(server.unanswered) == {second} and server.unanswered is unanswered
    server.clear_output()
    assert server.data_to_send() == b""
    assert client.forget_request(second) and not client.is_pending(second)
    assert not client.forget_request(second)
    assert client.data_to_send() == b""  # (no CANCEL)
    assert client.is_pending(first)


def test_frame_decoder_random_garbage_never_raises() -> None:
    rng = random.Random(3)
    for _ in range(300):
        decoder = FrameDecoder(64)
        decoder.feed(rng.randbytes(rng.randint(0, 300)))
        while (item := decoder.next()) is not None:
            assert isinstance(item, bytes | Oversized)
        proto = RpcProtocol(max_message_size=64)
        proto.receive_data(rng.randbytes(rng.randint(0, 300)))
        for event in proto.events():
            assert isinstance(event, ProtocolViolation | RequestReceived | NotificationReceived)


# -- blocking client and server over DTP -----------------------------------------------------------


def test_rpc_call_and_typed_errors(served: Served) -> None:
    check_calls_and_typed_errors(served.connect(timeout=5))


def test_rpc_inline_server_calls_and_typed_errors() -> None:
    """The same answers from handlers run inline (workers=0), with and without a
    context."""
    rpc = make_rpc(workers=0)
    rpc.register("whoami", lambda p, ctx: [ctx.method, p], context=True)
    s = Served(rpc)
    try:
        client = s.connect(timeout=5)
        check_calls_and_typed_errors(client)
        assert client.call("whoami", 3) == ["whoami", 3]
    finally:
        s.close()


def test_rpc_inline_small_and_large_messages_alternate() -> None:
    """The fast paths read small messages with QUICK_RECV_SIZE and switch to RECV_SIZE
    after one that did not come whole in a short read: messages of every size in any
    order arrive whole, and the client's read size follows the last answer."""
    s = Served(make_rpc(workers=0))
    try:
        client = s.connect(timeout=10)
        rng = random.Random(7)
        for size in [100, 200_000, 100, 70_000, 65_536, 900_000, 10, 300_000, 5, 64_000]:
            payload = rng.randbytes(size)
            assert client.call("echo", payload) == payload
            if size <= 1000:
                assert client._read_size == QUICK_RECV_SIZE, size
            elif size >= QUICK_RECV_SIZE:
                assert client._read_size == RECV_SIZE, size
        assert client.call("echo", [1, "two"]) == [1, "two"]
    finally:
        s.close()


def test_rpc_inline_server_over_a_plain_socket() -> None:
    """The inline server over a stream that is not a DTPSocket (no send_recv: it sends
    each answer and reads on itself), real TCP on 127.0.0.1: plain answers, typed
    errors, pipelined requests and a peer that goes away."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    client_sock = socket.create_connection(listener.getsockname())
    server_sock, _ = listener.accept()
    listener.close()
    rpc = make_rpc(workers=0)
    thread = threading.Thread(target=rpc.serve_stream, args=(server_sock,), daemon=True)
    thread.start()
    try:
        client = RpcClient(client_sock, timeout=5)
        check_calls_and_typed_errors(client)
        calls = [client.start("echo", i) for i in range(100)]
        assert [c.result() for c in calls] == list(range(100))
        assert rpc.served >= 102
    finally:
        client_sock.close()
        thread.join(5)
        server_sock.close()
    assert not thread.is_alive()


def check_calls_and_typed_errors(client: RpcClient) -> None:
    assert client.call("echo", {"a": [1, b"\x00", None]}) == {"a": [1, b"\x00", None]}
    with pytest.raises(E.MethodNotFound):
        client.call("nope")
    with pytest.raises(E.InvalidParams) as info:
        client.call("fail", 7)
    assert info.value.data == {"got": 7}
    with pytest.raises(E.InternalError) as crash:
        client.call("crash")
    assert "secret" not in str(crash.value)
    assert client.call("echo", 1) == 1  # still usable


def test_rpc_hundreds_in_flight_out_of_order(served: Served) -> None:
    client = served.connect(timeout=20)
    rng = random.Random(1)
    calls = [client.start("sleep", [rng.random() * 0.02, i]) for i in range(300)]
    assert client.in_flight > 0
    assert [c.result() for c in calls] == list(range(300))
    # and from many threads at once
    results: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(25):
            value = client.call("sleep", [0.001 * (i % 3), k * 100 + i])
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(k * 100 + i for k in range(12) for i in range(25))


def test_rpc_deadline_and_cancellation(served: Served) -> None:
    client = served.connect()
    start = time.monotonic()
    with pytest.raises(E.RpcTimeout):
        client.call("sleep", [10.0, "late"], timeout=0.2)
    # the answer comes after 10 s: a call that waited for it did not keep its deadline
    assert time.monotonic() - start < 5
    call = client.start("wait_cancel", None)
    time.sleep(0.05)
    assert call.cancel()
    with pytest.raises(E.RpcCancelled):
        call.result()
    assert client.call("echo", "after", timeout=5) == "after"
    with pytest.raises(E.RpcTimeout):
        client.start("sleep", [1.0, 0]).result(timeout=0.1)
    assert client.call("echo", "again", timeout=5) == "again"


def test_rpc_oversized_and_raw_garbage_keep_the_stream_usable() -> None:
    s = Served(make_rpc(max_message_size=4096))
    try:
        client = s.connect(timeout=5, max_message_size=1 << 20)
        with pytest.raises(E.RequestTooLarge):
            client.call("echo", b"x" * 10_000)
        assert client.call("echo", "ok") == "ok"
        with pytest.raises(E.PayloadTooLarge):
            RpcClient(s.socks[0], max_message_size=100).call("echo", b"y" * 200)
        sock = s.socks[0]
        junk = b"\xc1not msgpack"
        sock.sendall(struct.pack(">I", len(junk)) + junk)
        sock.sendall(encode_frame([0, 999, "echo", None, 0, None])[:-1] + b"\xc1")
        assert client.call("echo", "still ok") == "still ok"
        assert s.rpc.violations >= 2
        assert len(client.violations) >= 1  # the server's complaint about the junk frame
    finally:
        s.close()


def test_rpc_notifications_and_inline_server() -> None:
    got: list[Any] = []
    rpc = RpcServer(workers=0)
    rpc.register("echo", lambda p: p)
    rpc.register("note", got.append, notification=True)
    s = Served(rpc)
    try:
        client = s.connect(timeout=5)
        client.notify("note", {"x": 1})
        client.notify("unknown-note", 1)  # ignored
        assert client.call("echo", 2) == 2
        assert got == [{"x": 1}]
    finally:
        s.close()


def test_rpc_peer_closes_fails_calls(served: Served) -> None:
    client = served.connect()
    call = client.start("sleep", [5.0, 0])
    served.socks[0].abort("test")
    with pytest.raises(E.RpcConnectionLost):
        call.result(timeout=5)


# -- asyncio --------------------------------------------------------------------------------------


def test_async_rpc_concurrency_and_errors() -> None:
    async def main() -> None:
        rpc = AsyncRpcServer()

        async def sleep_then(p: list[Any]) -> Any:
            await asyncio.sleep(p[0])
            return p[1]

        rpc.register("sleep", sleep_then)
        rpc.register("echo", lambda p: p)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        try:
            host, port = server.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=identity.noise_public
            )
            async with AsyncRpcClient(reader, writer, timeout=10) as client:
                rng = random.Random(5)
                results = await asyncio.gather(
                    *(client.call("sleep", [rng.random() * 0.05, i]) for i in range(300))
                )
                assert results == list(range(300))
                with pytest.raises(E.MethodNotFound):
                    await client.call("nope")
                with pytest.raises(E.RpcTimeout):
                    await client.call("sleep", [1.0, 0], timeout=0.1)
                assert await client.call("echo", b"ok") == b"ok"
                await client.notify("whatever", 1)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


# -- JSON-RPC -------------------------------------------------------------------------------------


def test_jsonrpc_handler_over_dtp() -> None:
    handler = JsonRpcHandler({"add": lambda p: p[0] + p[1], "boom": lambda p: 1 / 0})
    rpc = RpcServer()
    serve_jsonrpc(rpc, handler)
    s = Served(rpc)
    try:
        client = JsonRpcClient(s.connect(timeout=5))
        assert client.call("add", [2, 3]) == 5
        with pytest.raises(E.MethodNotFound):
            client.call("sub", [1, 1])
        with pytest.raises(E.InternalError):
            client.call("boom")
        raw = s.connect(timeout=5)
        assert json.loads(raw.call("jsonrpc", b"{not json"))["error"]["code"] == E.PARSE_ERROR
        batch = json.dumps(
            [
                {"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": 1},
                {"jsonrpc": "2.0", "method": "add", "params": [0, 0]},
            ]
        ).encode()
        assert json.loads(raw.call("jsonrpc", batch)) == [{"jsonrpc": "2.0", "result": 2, "id": 1}]
        assert raw.call("jsonrpc", b'{"jsonrpc":"2.0","method":"add","params":[1,1]}') is None
        with pytest.raises(E.InvalidParams):
            raw.call("jsonrpc", 5)
    finally:
        s.close()


class _Backend(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = JsonRpcHandler({"mul": lambda p: p[0] * p[1]})(body)
        data = answer or b""
        self.send_response(200 if answer else 204)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_jsonrpc_http_proxy() -> None:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    proxy = JsonRpcHttpProxy(f"http://127.0.0.1:{backend.server_address[1]}/rpc", timeout=5)
    rpc = RpcServer(workers=4)
    serve_jsonrpc(rpc, proxy)
    s = Served(rpc)
    try:
        client = JsonRpcClient(s.connect(timeout=10))
        assert client.call("mul", [6, 7]) == 42
        assert [client.call("mul", [i, i]) for i in range(20)] == [i * i for i in range(20)]
        with pytest.raises(E.MethodNotFound):
            client.call("div", [1, 2])
    finally:
        s.close()
        proxy.close()
        backend.shutdown()
        backend.server_close()
    dead = JsonRpcHttpProxy("http://127.0.0.1:1/", timeout=1)
    assert json.loads(dead(b"{}") or b"{}")["error"]["code"] == E.INTERNAL_ERROR
    with pytest.raises(ValueError):
        JsonRpcHttpProxy("ftp://x/")


# -- money ----------------------------------------------------------------------------------------


def test_per_request_fees_from_the_sla() -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(price_per_kib=0, price_per_request=7, min_deposit=0)
    host = ledger.create_host(server_id, server_id.noise_public)
    ledger.add_service(server_id, host, 9, "jsonrpc", sla)
    cap = ledger.create_spending_cap(client_id, 10_000)
    ledger.faucet(client_id.sui_address, 1000)
    opened = ledger.open_connection(client_id, host, 9, cap, 50)
    payments = RequestPayments(
        ledger.receipt_scope(opened.connection_id), sla, client_id.ed25519_public, 50
    )
    rpc = make_rpc(payments=payments)
    s = Served(rpc)
    try:
        meter = Meter(
            client_id, ledger.receipt_scope(opened.connection_id), sla, 50, every_requests=1
        )
        client = s.connect(timeout=5, meter=meter)
        for i in range(7):
            assert client.call("echo", i) == i
        with pytest.raises(InsufficientFunds):
            client.call("echo", 8)  # an 8th request would exceed the 50 MIST deposit
        unpaid = s.connect(timeout=5)
        with pytest.raises(PaymentError) as refused:  # as a paid connection's close is
            unpaid.call("echo", 1)
        assert isinstance(refused.value, E.PaymentRequired)
        assert payments.earned == 49 and payments.served == 7
        assert payments.latest is not None
        paid = ledger.claim(server_id, opened.escrow_id, payments.latest)
        assert paid == 49 and ledger.balance(server_id.sui_address) == 49
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        s.close()


def test_response_escrow_paid_with_ack_and_refunded_after_deadline() -> None:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 1_000)
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    s = Served(make_rpc(response_fees=policy))
    try:
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10, grace_ms=500)
        client = s.connect(timeout=5, prepay=prepay)
        assert client.call("echo", "paid") == "paid"
        call = client.start("sleep", [0.6, "too late"], timeout=0.2)
        with pytest.raises(E.RpcTimeout):
            call.result()
        assert ledger.balance(client_id.sui_address) == 980
        deadline = time.monotonic() + 5
        while not policy.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert policy.claim_all() == 10
        assert ledger.balance(server_id.sui_address) == 10
        # the unanswered call: no refund before its deadline, then the full fee back
        assert prepay.refund_due() == 0
        ledger.advance_clock(10_000)
        time.sleep(0.7)  # the slow handler answers after the client gave up: dropped
        assert prepay.refund_due() == 10
        assert ledger.balance(client_id.sui_address) == 990
        escrows = [ledger.get_response_escrow(e) for e in policy.acks] or []
        assert escrows == []
        assert call.escrow_id is not None
        # refunded, and deleted by its requester in the same transaction
        with pytest.raises(ObjectNotFound):
            ledger.get_response_escrow(call.escrow_id)
        refunded = [e for e in ledger.events()[0] if e.name == "ResponseFeeRefunded"]
        assert [(e["escrow"], e["amount"]) for e in refunded] == [(call.escrow_id, 10)]
        # without a prepaid fee the service refuses
        with pytest.raises(E.PaymentRequired):
            s.connect(timeout=5).call("echo", 1)
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
        assert audit["escrows"] == 0
    finally:
        s.close()


def test_response_escrow_deliver_on_chain_when_unacknowledged() -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 100)
    policy = ResponseFeePolicy(ledger, server_id, min_amount=5)
    escrow_id = ledger.response_escrow_deposit(client_id, server_id.sui_address, b"r1", 5, 10_000)
    assert policy.admit({"re": escrow_id}, client_id.sui_address) == escrow_id
    with pytest.raises(E.PaymentRequired):
        policy.admit({"re": escrow_id}, client_id.sui_address)  # one escrow pays one response
    body = msgpack.packb([1, 1, "answer", None])
    policy.responded(escrow_id, body)
    assert not policy.acknowledged(escrow_id, b"\x00" * 64)  # a bad ack is not kept
    assert policy.deliver_unacknowledged() == 5
    esc = ledger.get_response_escrow(escrow_id)
    assert esc.state != RESPONSE_ESCROW_PAID and esc.funds == 0
    (event,) = ledger.events(filter=None)[0][-1:]
    assert event.name == "ResponseDelivered" and event["response"] == body


def test_demo_story_runs() -> None:
    from dtp.messaging._demo import demo_messaging_story

    lines: list[str] = []
    demo_messaging_story(lines.append)
    text = "\n".join(lines)
    assert "25 MIST for 1 request" in text and "'meet at noon'" in text
    assert "Delivered 1 time(s); 1 duplicate dropped." in text
    # the server settled nothing: the user took back what it did not spend, after the
    # half-close timeout, and no MIST is left in escrow
    assert "75 MIST unspent come back" in text
    assert "minted 1000 = balances 1000 + escrows 0 + broadcasts 0 MIST" in text


def test_rpc_fees_receipts_and_prepaid_responses(rpc_driver: Callable[..., Endpoint]) -> None:
    """Both drivers apply the same fee policies: per-request receipts from a Meter, and
    prepaid response fees acknowledged, claimed, or refunded after the deadline when the
    call went unanswered."""
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(price_per_kib=0, price_per_request=7, min_deposit=0)
    host = ledger.create_host(server_id, server_id.noise_public)
    ledger.add_service(server_id, host, 9, "jsonrpc", sla)
    cap = ledger.create_spending_cap(client_id, 10_000)
    ledger.faucet(client_id.sui_address, 1_000)
    opened = ledger.open_connection(client_id, host, 9, cap, 50)
    payments = RequestPayments(
        ledger.receipt_scope(opened.connection_id), sla, client_id.ed25519_public, 50
    )
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10, grace_ms=200)
    served = rpc_driver(payments=payments, response_fees=policy)
    meter = Meter(client_id, ledger.receipt_scope(opened.connection_id), sla, 50, every_requests=1)
    client = served.connect(timeout=5, meter=meter, prepay=prepay)
    assert client.call("echo", "a") == "a"
    assert client.call("echo", "b") == "b"
    with pytest.raises(E.RpcTimeout):
        client.call("sleep", [0.5, "late"], timeout=0.1)
    deadline = time.monotonic() + 1
    while len(policy.acks) != 2 and time.monotonic() < deadline:  # (acks travel after)
        time.sleep(0.01)
    assert len(policy.acks) == 2
    assert len(prepay.unanswered) == 1
    client.close()
    # a client without receipts is refused per request, the stream stays usable
    unpaid = served.connect(timeout=5)
    with pytest.raises(E.PaymentRequired):
        unpaid.call("echo", 1)
    with pytest.raises(E.PaymentRequired):
        unpaid.call("echo", 2)
    unpaid.close()
    assert payments.served == 3 and payments.earned == 21
    assert policy.claim_all() == 20
    assert payments.latest is not None
    assert ledger.claim(server_id, opened.escrow_id, payments.latest) == 21
    assert prepay.refund_due() == 0  # not before the ledger deadline
    ledger.advance_clock(10_000)
    assert prepay.refund_due() == 10
    assert ledger.balance(server_id.sui_address) == 41
    assert ledger.balance(client_id.sui_address) == 1_000 - 50 - 20
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_rpc_served_on_every_stream_the_client_opens() -> None:
    """RpcServer.serve_forever / AsyncRpcServer.serve_connection answer on extra streams too."""
    s = Served(make_rpc())
    try:
        client = s.connect(timeout=5)
        extra = [s.socks[0].open_stream() for _ in range(3)]
        clients = [RpcClient(sock, timeout=5) for sock in extra]
        assert [c.call("echo", i) for i, c in enumerate(clients)] == [0, 1, 2]
        assert client.call("echo", "first") == "first"
    finally:
        s.close()

    async def main() -> None:
        rpc = AsyncRpcServer()
        rpc.register("echo", lambda p: p)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve_connection, "127.0.0.1", 0, identity=identity)
        try:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            pairs = [await writer.open_stream() for _ in range(3)]
            answers = []
            for i, (r, w) in enumerate(pairs):
                async with AsyncRpcClient(r, w, timeout=5) as c:
                    answers.append(await c.call("echo", i))
            async with AsyncRpcClient(reader, writer, timeout=5) as c:
                answers.append(await c.call("echo", "first"))
            assert answers == [0, 1, 2, "first"]
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_rpc_streams_opened_on_a_busy_or_idle_connection_are_served_promptly() -> None:
    """The first stream's thread takes new streams (no thread blocked on the connection
    besides it): one opened while calls flow is served at once, one opened after the
    connection sat idle within about ACCEPT_POLL_MAX."""
    s = Served(make_rpc(workers=0))
    try:
        client = s.connect(timeout=5)
        start = time.monotonic()
        flowing = [client.start("echo", i) for i in range(200)]
        # a stream nobody took would wait out the call's 60 s timeout; 200 calls and
        # one more take milliseconds, so 30 s only says it was not left waiting
        busy = RpcClient(s.socks[0].open_stream(), timeout=60)
        assert busy.call("echo", "busy") == "busy"
        assert [c.result() for c in flowing] == list(range(200))
        assert time.monotonic() - start < 30
        time.sleep(4 * ACCEPT_POLL_MAX)  # long enough for the polls to back off fully
        idle = RpcClient(s.socks[0].open_stream(), timeout=5)
        start = time.monotonic()
        assert idle.call("echo", "idle") == "idle"
        # (a connection that stopped looking would leave it to the 5 s timeout)
        assert time.monotonic() - start < ACCEPT_POLL_MAX + 1.5
        assert client.call("echo", "first") == "first"
    finally:
        s.close()


def _response(request_id: int, result: Any, meta: Any = None) -> bytes:
    return encode_frame([1, request_id, result, meta])


def test_rpc_quiet_calls_take_every_answer_shape() -> None:
    """Sequential calls read their answer straight from the read that follows the
    request when it is just that; every other shape of what comes back -- the answer in
    pieces, after a notification or junk or a stale answer, with meta, of any value, an
    error, nothing in time, the stream closing -- is handled as on the general path."""

    def script(request: RequestReceived, send: Any) -> None:
        rid, how = request.request_id, request.method
        if how == "split":
            frame = _response(rid, "split")
            send(frame[:3])
            time.sleep(0.05)
            send(frame[3:])
        elif how == "note_first":
            send(encode_frame([3, "note", [1], None]) + _response(rid, "after note"))
        elif how == "note_after":
            send(_response(rid, "before note"))
            send(encode_frame([3, "note", [2], None]))
        elif how == "meta":
            send(_response(rid, "with meta", {"x": 1}))
        elif how == "value":
            send(_response(rid, request.params))
        elif how == "error":
            send(encode_frame([2, rid, E.INVALID_PARAMS, "no", {"d": 1}]))
        elif how == "junk_first":
            send(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
            send(_response(rid, "after junk"))
        elif how == "stale_first":
            send(_response(rid + 1000, "stale") + _response(rid, "fresh"))
        elif how == "slow":
            threading.Timer(3.0, lambda: send(_response(rid, "late"))).start()
        elif how == "close":
            pass  # the peer closes the stream

    peer = ScriptedPeer(script)
    notes: list[Any] = []
    try:
        client = RpcClient(peer.sock, timeout=5, on_notification=lambda m, p: notes.append(p))
        assert client.call("split") == "split"
        assert client.call("note_first") == "after note"
        assert client.call("note_after") == "before note"
        assert client.call("meta") == "with meta"
        for value in (b"\x00" * 300, "text", None, 7, -3, 1.5, True, [1, {"a": b""}]):
            assert client.call("value", value) == value
        with pytest.raises(E.InvalidParams) as info:
            client.call("error")
        assert info.value.data == {"d": 1}
        assert client.call("junk_first") == "after junk"
        assert client.call("stale_first") == "fresh"
        start = time.monotonic()
        with pytest.raises(E.RpcTimeout):
            client.call("slow", timeout=0.15)
        # the answer comes after 3 s: a call that waited for it overran its deadline
        assert time.monotonic() - start < 2.5
        assert client.call("value", "next", timeout=5) == "next"
        time.sleep(max(0.0, start + 3.2 - time.monotonic()))  # the late answer: dropped
        assert client.call("value", "again") == "again"
        assert notes == [[1], [2]]
        assert client.in_flight == 0 and client._proto.in_flight == 0
        with pytest.raises(E.RpcConnectionLost):
            client.call("close")
        with pytest.raises(E.RpcConnectionLost):
            client.call("value", 1)
    finally:
        peer.close()


def test_rpc_quiet_call_with_other_threads_and_close() -> None:
    """Calls started by other threads while a call on a quiet stream reads wait for
    that reader, as for any reader; close() fails the call that is reading."""
    s = Served(make_rpc(workers=4))
    try:
        client = s.connect(timeout=5)
        assert client.call("echo", "first") == "first"  # the stream carries data: lent
        outcome: list[Any] = []

        def slow() -> None:
            outcome.append(client.call("sleep", [1.0, "slow"]))

        reader = threading.Thread(target=slow)
        reader.start()
        assert wait_for(lambda: client._reading)  # it reads now, on a quiet stream
        assert client.call("echo", "meanwhile") == "meanwhile"
        # answered while the slow call still waits: its writer lock went with its request
        assert reader.is_alive()
        pipelined = client.start("sleep", [0.01, "pipelined"])
        assert pipelined.result() == "pipelined"
        reader.join(5)
        assert outcome == ["slow"]
        failed: list[BaseException] = []

        def doomed() -> None:
            try:
                client.call("sleep", [0.3, 0])
            except E.RpcConnectionLost as exc:
                failed.append(exc)

        reader = threading.Thread(target=doomed)
        reader.start()
        assert wait_for(lambda: client._reading)
        client.close()
        reader.join(5)
        assert len(failed) == 1
        with pytest.raises(E.RpcConnectionLost):
            client.call("echo", 1)
    finally:
        s.close()


def test_paid_rpc_by_host_id_blocking_and_asyncio(tmp_path: Path) -> None:
    """An RPC service reached by ``dtp://``: each connection's receipts are checked
    against its own ledger connection (ledger_payments), kept through on_receipt and
    claimed; a client that named no ledger connection is refused per request."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    provider, user = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
    host = ledger.create_host(provider, provider.noise_public)
    ledger.add_service(provider, host, 8545, "jsonrpc", sla)
    ledger.faucet(user.sui_address, 10_000)
    kept: dict[str, Receipt] = {}
    payments = ledger_payments(ledger, on_receipt=lambda r: kept.update({r.connection_id: r}))
    rpc = make_rpc(payments=payments)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=provider)
    ledger.set_endpoints(provider, host, [f"tcp://127.0.0.1:{server.address[1]}"])
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    try:
        sock = dtp.socket.create_connection(
            f"dtp://{host}:8545",
            ledger=ledger,
            identity=user,
            deposit=100,
            timeout=10,
            metering=OFF,
        )
        assert sock.connection_id is not None and sock.escrow_id is not None
        meter = Meter(user, ledger.receipt_scope(sock.connection_id), sla, 100, every_requests=1)
        client = RpcClient(sock, timeout=5, meter=meter)
        assert [client.call("echo", i) for i in range(3)] == [0, 1, 2]
        # a second stream of the same connection shares the connection's count
        extra = RpcClient(sock.open_stream(), timeout=5, meter=meter)
        assert extra.call("echo", "x") == "x"
        with pytest.raises(InsufficientFunds):
            client.call("echo", 5)  # a 5th request would exceed the deposit
        assert kept[sock.connection_id].total_requests == 4
        # a raw connection that named no ledger connection: refused per request
        raw = dtp.socket.create_connection(
            server.address, server_key=provider.noise_public, timeout=10
        )
        with pytest.raises(E.PaymentRequired, match="host ID"):
            RpcClient(raw, timeout=5).call("echo", 1)
        raw.close()

        async def main() -> str:
            rpc_async = AsyncRpcServer(payments=payments)
            rpc_async.register("echo", lambda p: p)
            aserver = await dtp.aio.start_server(
                rpc_async.serve_connection, "127.0.0.1", 0, identity=provider
            )
            try:
                await asyncio.to_thread(
                    ledger.set_endpoints, provider, host, [f"tcp://127.0.0.1:{aserver.address[1]}"]
                )
                reader, writer = await dtp.aio.open_connection(
                    f"dtp://{host}:8545",
                    ledger=ledger,
                    identity=user,
                    deposit=100,
                    timeout=10,
                    metering=OFF,
                )
                assert writer.connection_id is not None
                ameter = Meter(
                    user, ledger.receipt_scope(writer.connection_id), sla, 100, every_requests=1
                )
                async with AsyncRpcClient(reader, writer, timeout=5, meter=ameter) as c:
                    assert await c.call("echo", "async") == "async"
                writer.close()
                return writer.connection_id
            finally:
                aserver.close()
                await aserver.wait_closed()

        async_connection = asyncio.run(main())
        assert kept[async_connection].total_amount == 25
        tc = ledger.get_connection(sock.connection_id)
        assert ledger.claim(provider, tc.escrow, kept[sock.connection_id]) == 100
        async_escrow = ledger.get_connection(async_connection).escrow
        assert ledger.claim(provider, async_escrow, kept[async_connection]) == 25
        assert ledger.balance(provider.sui_address) == 125
        sock.close()
    finally:
        server.close()
        rpc.close()
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


@pytest.mark.parametrize(("workers", "context"), [(0, False), (0, True), (4, False)])
def test_rpc_server_waits_for_a_slow_reader_of_a_large_answer(workers: int, context: bool) -> None:
    """A connection's first stream reads with short timeouts (to look for new streams
    in between); sending an answer the client is slow to take must not inherit them:
    the answer waits for flow control and arrives whole, and the stream lives on
    (handlers inline, plain or with a context, and in a pool)."""
    rpc = RpcServer(workers=workers, max_message_size=8 << 20)
    blob = random.Random(3).randbytes(6 << 20)  # beyond one stream window (4 MiB)
    if context:
        rpc.register("blob", lambda p, ctx: blob, context=True)
    else:
        rpc.register("blob", lambda p: blob)
    s = Served(rpc)
    try:
        client = s.connect(timeout=20, max_message_size=8 << 20)
        assert client.call("blob", None) == blob  # the stream is lent by now
        call = client.start("blob", None)
        time.sleep(1.0)  # nobody reads: the server's send waits for window
        assert call.result() == blob
        assert client.call("blob", None) == blob
    finally:
        s.close()


class _FlakyClaims:
    """A ledger whose response_escrow_claim fails as told, per escrow, before going on."""

    def __init__(self, ledger: LocalLedger, failures: dict[str, list[Exception]]) -> None:
        self._ledger = ledger
        self.failures = failures
        self.tried: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def response_escrow_claim(self, signer: Any, escrow_id: str, digest: bytes, sig: bytes) -> int:
        self.tried.append(escrow_id)
        queue = self.failures.get(escrow_id)
        if queue:
            raise queue.pop(0)
        return self._ledger.response_escrow_claim(signer, escrow_id, digest, sig)


def test_claim_all_claims_each_fee_on_its_own() -> None:
    """One failed claim loses no other acknowledged fee: a refusal for good drops that
    one ack, a passing failure keeps it for the next claim_all, and an outage keeps the
    ones not tried yet."""
    from dtp.errors import ChainError
    from dtp.ledger.interface import response_ack_message
    from dtp.ledger.sui._client import LedgerUnavailable
    from dtp.messaging.rpc import response_hash

    base = LocalLedger(":memory:", clock_ms=0)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    base.faucet(client_id.sui_address, 1_000)
    escrows = [
        base.response_escrow_deposit(
            client_id, server_id.sui_address, f"r{i}".encode(), 10, 1_000 if i == 2 else 60_000
        )
        for i in range(5)
    ]
    busy = ChainError("object locked by another transaction", name="ObjectBusy", module="sui")
    outage = LedgerUnavailable("connection refused")
    ledger = _FlakyClaims(base, {escrows[1]: [busy], escrows[3]: [outage]})
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)  # type: ignore[arg-type]
    for i, escrow_id in enumerate(escrows):
        body = msgpack.packb([1, i, f"answer {i}", None])
        policy.responded(escrow_id, body)
        sig = client_id.sign(response_ack_message(base.package_id, escrow_id, response_hash(body)))
        assert policy.acknowledged(escrow_id, sig)
    # escrow 2 is refunded under the server's feet: its claim aborts in Move
    base.advance_clock(2_000)
    assert base.response_escrow_refund(client_id, escrows[2]) == 10

    assert policy.claim_all() == 10  # escrow 0; 1 is busy, 2 refused, 3 down, 4 untried
    assert ledger.tried == escrows[:4]
    assert set(policy.acks) == {escrows[1], escrows[3], escrows[4]}
    assert policy.claims_refused == 1 and policy.claimed == 10
    assert policy.claim_all() == 30  # the outage is over: all three are paid
    assert policy.acks == {} and policy.claimed == 40
    assert base.balance(server_id.sui_address) == 40
    assert base.balance(client_id.sui_address) == 1_000 - 40


def _serve_once(peer_address: Any) -> tuple[Any, BaseException | None]:
    """serve_stream on one end of a socketpair with ``peer_address``; returns what a
    handler saw as its peer address and what serve_stream raised."""
    server = RpcServer(workers=0)
    server.register("who", lambda params, ctx: ctx.peer_address, context=True)
    a, b = socket.socketpair()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_stream(a, peer_address=peer_address)
        except BaseException as exc:
            raised.append(exc)
        finally:
            a.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    seen: Any = None
    try:
        with RpcClient(b, timeout=30) as client:
            seen = client.call("who")
    except Exception as exc:  # the stream closed at once: the refusal is the server's
        seen = exc
    finally:
        b.close()
        thread.join(30)
        server.close()
    assert not thread.is_alive()
    return seen, (raised[0] if raised else None)


def test_serve_stream_refuses_a_peer_address_that_is_not_one() -> None:
    _, raised = _serve_once(5)
    assert isinstance(raised, InvalidObjectId)
    _, raised = _serve_once("alice")
    assert isinstance(raised, InvalidObjectId)


def test_serve_stream_gives_handlers_the_address_in_its_usual_form() -> None:
    seen, raised = _serve_once("0x5")
    assert raised is None
    assert seen == "0x" + "0" * 63 + "5"


def test_a_bare_method_decorator_registers_the_function_under_its_name() -> None:
    rpc = RpcServer()

    @rpc.method
    def add(params: list[int]) -> int:
        return sum(params)

    @rpc.method()
    def sub(params: list[int]) -> int:
        return params[0] - params[1]

    assert sorted(rpc.methods) == ["add", "sub"]
    assert add([1, 2]) == 3  # the function itself, not the decorator's wrapper
    served = Served(rpc)
    try:
        client = served.connect(timeout=PROMPT)
        assert client.call("add", [1, 2]) == 3
        assert client.call("sub", [3, 1]) == 2
        client.close()
    finally:
        served.close()


def test_a_bare_method_decorator_makes_the_checks_the_parenthesized_one_makes() -> None:
    rpc = RpcServer()

    @rpc.method
    def echo(params: Any) -> Any:
        return params

    with pytest.raises(ValueError, match="already registered"):

        @rpc.method
        def echo(params: Any) -> Any:  # (the same name: the clash is the point)
            return params

    with pytest.raises(ValueError, match="already registered"):
        rpc.method()(echo)
    # a callable with no name of its own is said so (not an AttributeError)
    with pytest.raises(TypeError, match="no name of its own"):
        rpc.method(functools.partial(echo))
    assert rpc.method("partial")(functools.partial(echo)) is not None
    with pytest.raises(TypeError, match="a method name is a str"):
        rpc.method(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        rpc.method("x" * 300)(echo)
    assert sorted(rpc.methods) == ["echo", "partial"]


def test_a_bare_method_decorator_registers_on_the_asyncio_server_too() -> None:
    rpc = AsyncRpcServer()

    @rpc.method
    async def echo(value: str) -> str:
        return value

    assert list(rpc.methods) == ["echo"]
    assert asyncio.iscoroutinefunction(echo)

    async def main() -> None:
        identity = HostIdentity.generate()
        srv = await dtp.aio.start_server(rpc.serve_connection, "127.0.0.1", 0, identity=identity)
        try:
            host, port = srv.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=srv.noise_public_key, timeout=PROMPT
            )
            async with AsyncRpcClient(reader, writer, timeout=PROMPT) as client:
                assert await client.call("echo", "hi") == "hi"
            writer.close()
            await writer.wait_closed()
        finally:
            srv.close()
            await srv.wait_closed()

    asyncio.run(main())


OLD_ANSWER = "the answer to the first client's call"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_client_on_a_stream_another_client_used_gets_its_own_answers(workers: int) -> None:
    rpc = RpcServer(workers=workers)

    @rpc.method()
    def slow(_: object) -> str:
        time.sleep(0.3)
        return OLD_ANSWER

    @rpc.method()
    def echo(value: str) -> str:
        return value

    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        threading.Thread(target=rpc.serve_forever, args=(srv,), daemon=True).start()
        with dtp.socket.create_connection(srv.address, 30, server_key=srv.noise_public_key) as s:
            old = RpcClient(s, timeout=30)
            old.start("slow")
            time.sleep(0.1)
            old.close()  # (the stream stays open: the call's answer is still to come)
            new = RpcClient(s, timeout=30)
            assert new.call("echo", "fresh") == "fresh"
            time.sleep(0.5)  # the old answer has come now
            assert new.call("echo", "again") == "again"
            new.close()
        rpc.close()


def test_an_asyncio_client_on_a_stream_another_client_used_gets_its_own_answers() -> None:
    rpc = AsyncRpcServer()

    @rpc.method()
    async def slow(_: object) -> str:
        await asyncio.sleep(0.3)
        return OLD_ANSWER

    @rpc.method()
    async def echo(value: str) -> str:
        return value

    async def main() -> None:
        identity = HostIdentity.generate()
        srv = await dtp.aio.start_server(rpc.serve_connection, "127.0.0.1", 0, identity=identity)
        host, port = srv.address
        reader, writer = await dtp.aio.open_connection(
            host, port, server_key=srv.noise_public_key, timeout=30
        )
        old = AsyncRpcClient(reader, writer, timeout=30)
        task = asyncio.create_task(old.call("slow"))
        await asyncio.sleep(0.1)
        await old.close()
        with pytest.raises(DTPError):
            await task
        await asyncio.sleep(0.5)  # the old answer came, unread
        new = AsyncRpcClient(reader, writer, timeout=30)
        assert await new.call("echo", "fresh") == "fresh"
        await new.close()
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()

    asyncio.run(main())


def test_first_request_ids_differ_between_protocols_unless_given() -> None:
    firsts = {RpcProtocol().send_request("m") for _ in range(20)}
    assert len(firsts) > 1
    assert RpcProtocol(first_id=5).send_request("m") == 5
    for bad in (0, -1, 2**63, 1.0, True):
        with pytest.raises(ValueError, match="first_id"):
            RpcProtocol(first_id=bad)  # type: ignore[arg-type]


def test_a_lost_rpc_stream_is_a_connection_error_as_a_lost_connection_is() -> None:
    rpc = RpcServer()

    @rpc.method()
    def echo(value: str) -> str:
        return value

    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        threading.Thread(target=rpc.serve_forever, args=(srv,), daemon=True).start()
        with dtp.socket.create_connection(srv.address, 30, server_key=srv.noise_public_key) as s:
            client = RpcClient(s, timeout=30)
            assert client.call("echo", "x") == "x"
            rpc.close()
            srv.close()
            s.close()
            with pytest.raises(ConnectionError) as caught:
                client.call("echo", "y")
            assert isinstance(caught.value, RpcConnectionLost)
