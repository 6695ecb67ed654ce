"""SuiNode's loop when the node is dropped, closed twice at once, or stuck in a call that
ignores its cancellation (QA, session 18).

The node is real over 127.0.0.1: the grpclib server of ``test_s15_sui`` (``GrpcNode``),
reached through the forwarding proxy of ``test_s18_sui_channel`` where the test needs to
see the client end its connection. Calls that ignore their cancellation are coroutines
passed to ``SuiNode.run()`` here: no node can make a client's own task do that.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.chain import sui_client
from dtp.chain.sui import SuiConfig, SuiLedger
from dtp.chain.sui_client import LedgerUnavailable, SuiNode
from tests.leaks import resource_warnings
from tests.sui_proxies import SilentFirstProxy
from tests.test_s15_sui import JOIN, NODE_TIMEOUT, PACKAGE, _const, grpc_node

__all__ = ["grpc_node"]  # fixture, used by name

EPOCH = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=7, reference_gas_price=750))


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
    loop thread ends and its connection is closed. Before, both lived until the process
    exited. The finalizer must not keep the node alive either."""
    node = grpc_node({"GetEpoch": _const(EPOCH)})
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
    node = grpc_node({"GetEpoch": _const(EPOCH)})

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
    node = grpc_node({"GetEpoch": _const(EPOCH)})
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
    one thread's close() waits for it. A second close() used to return at once, the loop
    thread still running; now it returns once that thread ended."""
    node = grpc_node({"GetEpoch": _const(EPOCH)})
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
        second.join(2.0)  # the bug: it returns here, with the loop thread alive
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
    then stops the loop. The call's caller used to wait for ever on a loop that no longer
    ran; now it gets LedgerUnavailable saying the connection was closed."""
    monkeypatch.setattr(sui_client, "_CLOSE_WAIT", 0.5)
    node = grpc_node({"GetEpoch": _const(EPOCH)})
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
