"""RpcServer's counters (``served``, ``violations``) under concurrent streams and pool
workers: exact totals, while streams are served and after they end."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from dtp.messaging.rpc import RpcServer
from tests.messaging.rpc_world import Served


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # threads take turns as often as the interpreter lets them: a count updated in two
    # steps by several threads loses updates where the interpreter may switch between
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.parametrize("workers", [0, 4])
def test_counters_are_exact_under_concurrent_streams(workers: int, fast_switching: None) -> None:
    rpc = RpcServer(workers=workers)
    rpc.register("echo", lambda p: p)
    s = Served(rpc)
    try:
        clients = [s.connect() for _ in range(4)]
        rounds = 300
        errors: list[BaseException] = []

        def run(index: int) -> None:
            client = clients[index]
            try:
                for i in range(rounds):
                    if i % 100 == 0:  # a frame that is not msgpack: one violation
                        s.socks[index].sendall(b"\x00\x00\x00\x01\xc1")
                    assert client.call("echo", i, timeout=10) == i
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert rpc.served == 4 * rounds  # streams still being served
        assert rpc.violations == 4 * 3
    finally:
        s.close()
    assert rpc.served == 4 * rounds  # and once they ended (their counts kept)
    assert rpc.violations == 4 * 3
