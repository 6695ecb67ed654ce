"""Deadlines of calls whose thread waits while another thread reads the stream for
everybody (a follower): the call's own deadline ends it on time, and the CANCEL of a
call that timed out so leaves at once. Before, both waited for the end of the reader's
current read, which may have begun before the call was made with up to a second to
wait."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dtp.messaging import errors as E
from dtp.messaging import rpc as rpc_module
from dtp.messaging.rpc import CallContext, RpcClient, RpcServer
from tests.polling import wait_for
from tests.test_messaging_rpc import Served


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Any:
    # reads of 10 minutes: a call that waited for the end of the reader's read would
    # wait that long, so the bounds below need no tighter than "not held up"
    monkeypatch.setattr(rpc_module, "_READ_SLICE", 600.0)
    gate = threading.Event()
    cancelled = threading.Event()
    rpc = RpcServer(workers=4)
    rpc.register("block", lambda p: gate.wait(10))

    def wait_cancel(p: Any, ctx: CallContext) -> Any:
        if ctx.cancelled.wait(10):
            cancelled.set()
        return None

    rpc.register("wait_cancel", wait_cancel, context=True)
    s = Served(rpc)
    client = s.connect()
    # another thread reads for everybody, with no deadline of its own
    reader = threading.Thread(target=client.call, args=("block", None))
    reader.start()
    assert wait_for(lambda: client._reading and client.in_flight == 1)
    yield client, cancelled
    gate.set()
    reader.join(5)
    s.close()


def test_a_calls_own_deadline(setup: tuple[RpcClient, threading.Event]) -> None:
    client, _ = setup
    started = time.monotonic()
    with pytest.raises(E.RpcTimeout):
        client.call("wait_cancel", None, timeout=0.1)
    assert time.monotonic() - started < 30  # (the old code: the read slice, 600 s here)


def test_a_result_timeouts_cancel_leaves_at_once(
    setup: tuple[RpcClient, threading.Event],
) -> None:
    client, cancelled = setup
    call = client.start("wait_cancel", None)
    started = time.monotonic()
    with pytest.raises(E.RpcTimeout):
        call.result(timeout=0.1)
    # the server's handler sees the CANCEL well before the reader's read ends
    assert cancelled.wait(30)
    assert time.monotonic() - started < 30
