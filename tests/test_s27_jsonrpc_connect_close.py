"""JsonRpcHttpProxy.close() cuts short a call still connecting to its backend: the
proxy's sockets are noted before they connect, so close() shuts the connecting one
down and the connect ends at once. A backend that did not answer the SYN (a full
accept queue, a firewall that drops) held the call, and so close(), for the whole
timeout."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import JsonRpcHttpProxy


@pytest.fixture
def unanswered() -> Iterator[str]:
    """The URL of a listener whose accept queue is full: a new connect's SYN is dropped,
    and the connect waits (the kernel retries the SYN for a long time)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(address)
        fillers.append(sock)
    time.sleep(0.2)
    # (the premise: a plain connect now waits)
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(TimeoutError):
        probe.connect(address)
    probe.close()
    try:
        yield f"http://127.0.0.1:{address[1]}/"
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def test_close_cuts_short_a_call_that_is_connecting(unanswered: str) -> None:
    proxy = JsonRpcHttpProxy(unanswered, timeout=30)
    answers: list[bytes | None] = []
    caller = threading.Thread(
        target=lambda: answers.append(proxy(b'{"jsonrpc":"2.0","method":"m","id":3}')),
        daemon=True,
    )
    caller.start()
    time.sleep(0.3)  # connecting by now
    start = time.monotonic()
    proxy.close()
    caller.join(10)
    assert not caller.is_alive(), "close() left the call connecting"
    assert time.monotonic() - start < 5  # (not the 30 s timeout)
    failed = json.loads(answers[0] or b"")
    assert failed["error"] == {"code": E.INTERNAL_ERROR, "message": "backend unreachable"}
    assert failed["id"] == 3
