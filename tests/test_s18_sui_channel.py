"""SuiNode's channel lifetime: after a timeout, and calls racing close() (QA, session 18).

The node is real over 127.0.0.1: the grpclib server of ``test_s15_sui`` (``GrpcNode``),
behind a TCP proxy here whose first connection is accepted and never answered (an HTTP/2
connection that stopped answering). Before, a call that timed out left its stuck channel
in place for every later call, and a call racing close() could open a channel on a loop
being stopped, which the next loop then used (MalformedResponse for a good answer, a
RuntimeError from close(), a caller waiting for ever).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.chain.sui_client import LedgerUnavailable, SuiNode
from tests.leaks import resource_warnings
from tests.sui_proxies import SilentFirstProxy
from tests.test_s15_sui import JOIN, NODE_TIMEOUT, _const, grpc_node

__all__ = ["grpc_node"]  # fixture, used by name

EPOCH = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=7, reference_gas_price=750))


@pytest.fixture
def fine_switching() -> Iterator[None]:
    """Threads switch every 10 µs rather than every 5 ms: many more interleavings of the
    callers and close() in the same number of calls."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def _sui_threads(client: SuiNode) -> list[threading.Thread]:
    name = f"dtp-sui-{client.host}:{client.port}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


# -- a call that timed out: the next one gets a new connection -----------------------------------


def test_a_call_after_a_timeout_opens_a_new_connection_and_closes_the_stuck_one(
    grpc_node: Any,
) -> None:
    """The first connection never answers: the call times out (1 s). The next call, with
    a budget of 30 s, used to go down the same stuck connection and time out too; now it
    opens a new one, which reaches the node, and the stuck one is closed."""
    node = grpc_node({"GetEpoch": _const(EPOCH)})
    proxy = SilentFirstProxy(node.port, silent=1)
    client = SuiNode(proxy.url, timeout=1.0)
    try:
        with pytest.raises(LedgerUnavailable, match=r"did not answer GetEpoch within 1\.0 s"):
            client.epoch_info()
        assert node.handlers.calls == []
        client.timeout = JOIN / 2
        assert client.epoch_info() == (7, 750)
        assert proxy.connections == 2
        assert node.handlers.calls == ["GetEpoch"]
        assert proxy.ended.wait(JOIN), "the stuck connection was never closed"
        assert client.epoch_info() == (7, 750)  # the new connection is kept
        assert proxy.connections == 2
    finally:
        client.close()
        proxy.close()


def test_a_dropped_channel_is_closed_and_close_leaves_nothing_open(grpc_node: Any) -> None:
    """No ResourceWarning (grpclib's "Unclosed connection") once close() returned, after a
    timeout dropped one channel and another served a call; no loop thread left."""
    node = grpc_node({"GetEpoch": _const(EPOCH)})
    proxy = SilentFirstProxy(node.port, silent=1)
    client = SuiNode(proxy.url, timeout=1.0)

    def use() -> None:
        with pytest.raises(LedgerUnavailable, match="did not answer"):
            client.epoch_info()
        client.timeout = JOIN / 2
        assert client.epoch_info() == (7, 750)
        client.close()

    try:
        assert resource_warnings(use) == []
        assert _sui_threads(client) == []
    finally:
        client.close()
        proxy.close()


# -- calls racing close() ------------------------------------------------------------------------


@pytest.mark.usefixtures("fine_switching")
def test_calls_racing_close_end_typed_and_leave_no_channel_or_thread(grpc_node: Any) -> None:
    """Four threads call while close() is called again and again. Each call answers or
    raises LedgerUnavailable saying the connection was closed; none hangs; close() never
    raises; afterwards no loop thread runs, nothing is left unclosed, and the node still
    works. Before, a call could open its channel after close() took the old one: that
    channel outlived its loop and the next loop used it (MalformedResponse for a good
    answer, RuntimeError 'Event loop is closed' from close(), a caller stuck for ever)."""
    node = grpc_node({"GetEpoch": _const(EPOCH)})
    client = SuiNode(node.url, timeout=NODE_TIMEOUT)
    stop = threading.Event()
    outcomes: list[BaseException | None] = []

    def caller() -> None:
        while not stop.is_set():
            try:
                client.epoch_info()
                outcomes.append(None)
            except BaseException as exc:  # the test inspects whatever it is
                outcomes.append(exc)

    callers = [threading.Thread(target=caller, daemon=True) for _ in range(4)]

    def race() -> None:
        for thread in callers:
            thread.start()
        try:
            for _ in range(100):
                time.sleep(0.002)
                client.close()
        finally:
            stop.set()
            for thread in callers:
                thread.join(JOIN)
        client.close()

    try:
        assert resource_warnings(race) == []
        assert not [t for t in callers if t.is_alive()], "a call still waits"
        assert _sui_threads(client) == []
        odd = [
            exc
            for exc in outcomes
            if exc is not None and not (isinstance(exc, LedgerUnavailable) and "closed" in str(exc))
        ]
        assert odd == [], f"{len(odd)} calls ended otherwise, e.g. {odd[0]!r}"
        assert None in outcomes  # some calls were answered: the race did run calls
        assert client.epoch_info() == (7, 750)  # a call after close() starts a new loop
    finally:
        stop.set()
        client.close()
        for thread in callers:
            thread.join(JOIN)
    assert _sui_threads(client) == []
