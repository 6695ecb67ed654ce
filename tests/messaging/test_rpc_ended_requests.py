"""A request that ends before its handler starts -- the client cancelled it, or its
deadline passed while it waited behind others (in the worker pool's queue, or in a
batch read by an inline server) -- is dropped: its handler never runs, side effects
and all, for a caller told its call was cancelled or timed out."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import pytest

from dtp.messaging import errors as E
from dtp.messaging._protocol import RpcProtocol
from dtp.messaging.rpc import CallContext, RpcServer
from tests.messaging.rpc_world import Served
from tests.support.polling import wait_for


def _server(ran: list[Any], gate: threading.Event) -> RpcServer:
    rpc = RpcServer(workers=1)
    rpc.register("block", lambda p: gate.wait(10))
    rpc.register("record", lambda p: ran.append(p) or p)

    def record_ctx(p: Any, ctx: CallContext) -> Any:
        ran.append(p)
        return p

    rpc.register("record_ctx", record_ctx, context=True)
    return rpc


@pytest.mark.parametrize("method", ["record", "record_ctx"])
def test_requests_queued_for_the_pool_that_ended_never_run(method: str) -> None:
    ran: list[Any] = []
    gate = threading.Event()
    rpc = _server(ran, gate)
    s = Served(rpc)
    try:
        client = s.connect(timeout=5)
        blocker = client.start("block", None)  # holds the only worker
        late = client.start(method, "late", timeout=0.05)
        with pytest.raises(E.RpcTimeout):
            late.result()
        cancelled = client.start(method, "cancelled")
        assert cancelled.cancel()
        # the server has seen both end (the CANCELs reached it)
        ids = (late.request_id, cancelled.request_id)
        assert wait_for(
            lambda: all(i not in st.proto._incoming for st in list(rpc._live) for i in ids)
        )
        gate.set()
        assert blocker.result() is True
        assert client.call(method, "after") == "after"  # (behind them in the pool)
        assert ran == ["after"]
    finally:
        gate.set()
        s.close()


def test_an_inline_server_drops_what_ended_while_earlier_requests_of_a_batch_ran() -> None:
    ran: list[Any] = []
    rpc = RpcServer(workers=0)
    rpc.register("slow", lambda p: time.sleep(p))
    rpc.register("record", lambda p: ran.append(p) or p)
    s = Served(rpc)
    try:
        s.connect()  # (the socket)
        sock = s.socks[0]
        proto = RpcProtocol(first_id=1)  # (the answers below name ids 1..4)
        # one write: the server reads them together and runs the handlers in turn
        proto.send_request("slow", 0.05)
        proto.send_request("record", "deadline", timeout=0.01)  # passes during "slow"
        cancelled = proto.send_request("record", "cancelled")
        proto.cancel(cancelled)
        proto.send_request("record", "kept")
        sock.sendall(proto.data_to_send())
        answers: list[Any] = []
        unpacker = msgpack.Unpacker(raw=False)
        buf = b""
        sock.settimeout(5)
        while len(answers) < 2:
            buf += sock.recv(65536)
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                n = int.from_bytes(buf[:4], "big")
                unpacker.feed(buf[4 : 4 + n])
                answers.extend(unpacker)
                buf = buf[4 + n :]
        assert [a[:3] for a in answers] == [[1, 1, None], [1, 4, "kept"]]
        assert ran == ["kept"]
    finally:
        s.close()
