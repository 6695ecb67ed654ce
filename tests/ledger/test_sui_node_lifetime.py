"""SuiNode's channel lifetime: after a timeout, and calls racing close().

The node is real over 127.0.0.1: the grpclib server of
``tests/support/grpc_nodes.py`` (``GrpcNode``), behind a TCP proxy here whose
first connection is accepted and never answered (an HTTP/2 connection that stopped
answering). A call that times out leaves no stuck channel for later calls, and a call
racing close() never opens a channel on a loop being stopped (which the next loop
would use: MalformedResponse for a good answer, a RuntimeError from close(), a caller
waiting for ever).

SuiNode's loop when the node is dropped, closed twice at once, or stuck in a call that
ignores its cancellation.

The node is real over 127.0.0.1: the grpclib server of
``tests/support/grpc_nodes.py`` (``GrpcNode``), reached through the forwarding
proxy above where the test needs to see the client end its connection. Calls that ignore
their cancellation are coroutines passed to ``SuiNode.run()`` here: no node can make a
client's own task do that."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui import _client as sui_client
from dtp.ledger.sui._client import LedgerUnavailable, SuiNode
from tests.ledger.sui_tx_cases import PACKAGE
from tests.support.grpc_nodes import JOIN, NODE_TIMEOUT, constant_answer
from tests.support.leaks import resource_warnings
from tests.support.sui_proxies import SilentFirstProxy

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
    a budget of 30 s, does not go down the same stuck connection: it opens a new one,
    which reaches the node, and the stuck one is closed."""
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
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
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
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
    works: no call opens its channel after close() took the old one, so no channel
    outlives its loop."""
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
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


def _ignore_cancellation(started: threading.Event, release: threading.Event) -> Any:
    """A call that sets ``started``, then waits (600 s) and, when cancelled, goes on
    waiting until ``release`` is set."""

    async def call() -> None:
        started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            while not release.is_set():
                await asyncio.sleep(0.01)
            raise

    return call


def _call_in_thread(client: SuiNode, make: Any) -> tuple[threading.Thread, list[BaseException]]:
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.run(make, "Stuck")
        except BaseException as exc:  # the test inspects whatever it is
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)  # if it hangs, not the run too
    caller.start()
    return caller, outcome


# -- a node dropped without close() ---------------------------------------------------------------


def test_a_dropped_node_stops_its_loop_and_closes_its_connection(grpc_node: Any) -> None:
    """A SuiNode that served a call and is dropped without close(): once collected, its
    loop thread ends and its connection is closed, not at the process's exit. The
    finalizer must not keep the node alive either."""
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
    proxy = SilentFirstProxy(node.port, silent=0)  # forwards every connection
    try:

        def use() -> tuple[weakref.ref[SuiNode], threading.Thread]:
            client = SuiNode(proxy.url, timeout=NODE_TIMEOUT)
            assert client.epoch_info() == (7, 750)
            thread = client._thread
            assert thread is not None and thread.is_alive()
            return weakref.ref(client), thread

        def drop() -> None:
            ref, thread = use()
            gc.collect()
            assert ref() is None, "something still holds the dropped SuiNode"
            thread.join(JOIN)
            assert not thread.is_alive(), "the loop thread of a dropped SuiNode still runs"

        # nothing left unclosed either (grpclib's "Unclosed connection", a socket)
        assert resource_warnings(drop) == []
        assert proxy.connections == 1
        client_to_node = proxy.pumps[0]  # ends when the client closes its connection
        client_to_node.join(JOIN)
        assert not client_to_node.is_alive(), "the dropped SuiNode's connection is still open"
    finally:
        proxy.close()


def test_a_dropped_sui_ledger_stops_its_nodes_loop(grpc_node: Any) -> None:
    """The same for a SuiLedger dropped without close() (it holds a SuiNode)."""
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})

    def use() -> threading.Thread:
        ledger = SuiLedger(SuiConfig(node.url, PACKAGE, timeout=NODE_TIMEOUT))
        assert ledger._node.epoch_info() == (7, 750)
        thread = ledger._node._thread
        assert thread is not None
        return thread

    thread = use()
    gc.collect()
    thread.join(JOIN)
    assert not thread.is_alive(), "the loop thread of a dropped SuiLedger still runs"


def test_close_after_the_node_was_used_again_still_stops_the_new_loop(grpc_node: Any) -> None:
    """close(), a call (a new loop), close(): the first close() must not leave a
    finalizer that fires later on, and the second stops the new loop."""
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
    client = SuiNode(node.url, timeout=NODE_TIMEOUT)
    try:
        assert client.epoch_info() == (7, 750)
        client.close()
        assert client.epoch_info() == (7, 750)
        thread = client._thread
        assert thread is not None and thread.is_alive()
        client.close()
        assert not thread.is_alive()
        assert client._finalizer is None
    finally:
        client.close()


# -- two close() at once ---------------------------------------------------------------------------


def test_a_second_close_returns_only_once_the_loop_thread_ended(grpc_node: Any) -> None:
    """A call in flight takes its time to end when cancelled (until the test releases it);
    one thread's close() waits for it, and so does a second close(): it returns once the
    loop thread ended, not at once."""
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
    client = SuiNode(node.url, timeout=NODE_TIMEOUT)
    started, release = threading.Event(), threading.Event()
    caller, outcome = _call_in_thread(client, _ignore_cancellation(started, release))
    first = threading.Thread(target=client.close, daemon=True)
    second_saw: list[bool] = []

    def second_close() -> None:
        client.close()
        second_saw.append(thread.is_alive())

    second = threading.Thread(target=second_close, daemon=True)
    try:
        assert started.wait(JOIN)
        thread = client._thread
        assert thread is not None
        first.start()
        for _ in range(int(JOIN / 0.01)):  # until the first close() took the runner
            if client._runner is None:
                break
            threading.Event().wait(0.01)
        assert client._runner is None
        second.start()
        second.join(2.0)  # it must not return here, with the loop thread alive
        release.set()
        second.join(JOIN)
        first.join(JOIN)
        assert not second.is_alive() and not first.is_alive(), "a close() still waits"
        assert second_saw == [False], "the second close() returned before the loop stopped"
        caller.join(JOIN)
        assert len(outcome) == 1 and isinstance(outcome[0], LedgerUnavailable)
        assert "closed" in str(outcome[0])
    finally:
        release.set()
        client.close()
        caller.join(JOIN)


# -- a call that ignores its cancellation ---------------------------------------------------------


def test_a_call_ignoring_its_cancellation_ends_typed_once_close_gave_up(
    grpc_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() waits a bounded time (here 0.5 s) for a call that ignores its cancellation,
    then stops the loop. The call's caller gets LedgerUnavailable saying the connection
    was closed, never a wait for ever on a loop that no longer runs."""
    monkeypatch.setattr(sui_client, "_CLOSE_WAIT", 0.5)
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
    client = SuiNode(node.url, timeout=NODE_TIMEOUT)
    started, release = threading.Event(), threading.Event()  # never released: stuck
    caller, outcome = _call_in_thread(client, _ignore_cancellation(started, release))
    try:
        assert started.wait(JOIN)
        thread = client._thread
        assert thread is not None
        client.close()
        thread.join(JOIN)
        assert not thread.is_alive(), "close() left the loop running"
        caller.join(JOIN)
        assert not caller.is_alive(), "the caller still waits on a stopped loop"
        assert len(outcome) == 1 and isinstance(outcome[0], LedgerUnavailable)
        assert "closed during Stuck" in str(outcome[0])
        assert client.epoch_info() == (7, 750)  # a later call starts a new loop
    finally:
        release.set()
        client.close()
        caller.join(JOIN)
